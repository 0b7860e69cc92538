"""Textual inversion: new tokens in every tokenizer, their vectors the only thing trained in the text
encoders, exported in AUTOMATIC1111's layout.

The tokens are added as diffusers' `load_textual_inversion` adds them when the file is used later
(`tokenizer.add_tokens(token)`, one vector per token: `token`, `token_1`, …), so training and inference
tokenize the same way. Each text encoder's input embedding is resized when a new id falls outside it and
the new rows start from `init_token`'s vector (or from a random vector of the rows' typical norm).

Only those rows learn. Rather than give the whole embedding matrix a gradient and restore every other
row after each step (diffusers' textual_inversion.py), the encoder's input embedding is wrapped
(`TokenRows`): the frozen matrix answers for every id, and a small `[vectors, dim]` parameter answers for
the new ids. The optimizer, its state and the checkpoints then hold a few vectors, not the 49408×1280
matrix of SDXL's bigG (about 1.6 GB of fp32 weights, gradients and Adam moments). `fold` writes the
trained rows into the matrix and puts the plain embedding back.

Files: SD 1/2 `{"emb_params": [vectors, dim]}`; SDXL `{"clip_l": …, "clip_g": …}` (the family's
`embedding_key` of each encoder), as A1111, ComfyUI and workers/embeddings.py read them.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.training import seeds


class TokenRows(nn.Module):
    """An input embedding whose rows for `ids` are the trainable `rows` (the base matrix stays frozen)."""

    def __init__(self, base: nn.Embedding, ids: list[int], rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long, device=base.weight.device),
                             persistent=False)
        self.rows = nn.Parameter(rows.detach().to(base.weight.device, torch.float32).clone())

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids)
        match = input_ids.unsqueeze(-1) == self.ids  # [..., k]
        new = match.to(self.rows.dtype) @ self.rows  # [..., dim]; one row per matching id
        return torch.where(match.any(-1, keepdim=True), new.to(out.dtype), out)

    def fold(self) -> nn.Embedding:
        with torch.no_grad():
            self.base.weight[self.ids] = self.rows.to(self.base.weight.dtype)
        return self.base


def add_tokens(tokens: list[str], init_token: str | None, encoders, seed: int) -> dict[str, TokenRows]:
    """Add `tokens` to each (name, encoder, tokenizer) and wrap the encoder's input embedding; the
    `TokenRows` of each encoder by name."""
    wrapped = {}
    generator = seeds.generator(seed, seeds.TOKEN_INIT)
    for name, encoder, tokenizer in encoders:
        base = encoder.get_input_embeddings()
        weight = base.weight.detach()
        if init_token is not None:
            init_id = tokenizer(init_token, add_special_tokens=False).input_ids[0]
            start = weight[init_id].float().cpu()
        else:
            norm = weight.float().norm(dim=1).mean().cpu()
            start = torch.randn(weight.shape[1], generator=generator)
            start = start / start.norm() * norm
        for token in tokens:
            tokenizer.add_tokens(token)
        ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
        if max(ids) >= base.num_embeddings:
            encoder.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
            base = encoder.get_input_embeddings()
            base.weight.requires_grad_(False)
        rows = start.unsqueeze(0).repeat(len(ids), 1)
        with torch.no_grad():
            base.weight[ids] = rows.to(base.weight.device, base.weight.dtype)
        wrapped[name] = TokenRows(base, ids, rows)
        encoder.set_input_embeddings(wrapped[name])
    return wrapped


def fold(encoders, wrapped: dict[str, TokenRows]) -> None:
    """Trained rows into each encoder's embedding matrix; the plain embedding back in place."""
    for name, encoder, _ in encoders:
        if name in wrapped and encoder.get_input_embeddings() is wrapped[name]:
            encoder.set_input_embeddings(wrapped[name].fold())


def export(family, wrapped: dict[str, TokenRows], metadata: dict[str, str]) -> bytes:
    """The embedding file (safetensors bytes, float32) in A1111's layout for `family`."""
    from safetensors.torch import save

    vectors = {name: rows.rows.detach().float().cpu().contiguous() for name, rows in wrapped.items()}
    if len(vectors) == 1:
        state = {"emb_params": next(iter(vectors.values()))}
    else:
        state = {te.embedding_key: vectors[te.encoder] for te in family.text_encoders if te.encoder in vectors}
    return save(state, metadata={k: str(v) for k, v in metadata.items()})
