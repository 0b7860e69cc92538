"""Captions into the UNet's conditioning, exactly as the inference pipelines compute it, so that what is
learnt is what a prompt later gets:

- SD 1.x/2.x (`StableDiffusionPipeline.encode_prompt`): the text encoder's last hidden state (with the
  attention mask only for encoders whose config asks for it);
- SDXL (`StableDiffusionXLPipeline.encode_prompt`): each encoder's penultimate hidden state, concatenated,
  and the pooled (projected) output of the last encoder that gives a 2-D first output.

Captions are tokenized once (after an embedding's tokens are added). When no text encoder trains (a plain
LoRA), every distinct caption, the empty dropout caption included, is encoded once and the encoders are
not run during steps.
"""

from __future__ import annotations

import torch


class Captions:
    """The distinct captions of a training set (index 0: "", the dropout caption), tokenized for each
    tokenizer, and, when frozen, their encodings."""

    def __init__(self, captions: list[str], encoders: list[tuple[str, object, object]], xl: bool):
        self.texts = [""] + [c for c in dict.fromkeys(captions) if c != ""]
        self.index = {c: i for i, c in enumerate(self.texts)}
        self.names = [name for name, _, _ in encoders]
        self.xl = xl
        self.ids: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        for _, _, tokenizer in encoders:
            tokens = tokenizer(self.texts, padding="max_length", max_length=tokenizer.model_max_length,
                               truncation=True, return_tensors="pt")
            self.ids.append(tokens.input_ids)
            self.masks.append(tokens.attention_mask)
        self.cached: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def encode(self, encoders: list, rows: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The conditioning of captions `rows` (indices): hidden states [B, L, D] and (SDXL) pooled [B, P].
        `encoders`: the modules to call, in order (prepared/wrapped ones while training)."""
        if self.cached is not None:
            hidden, pooled = self.cached
            rows = rows.to(hidden.device)
            return hidden[rows], None if pooled is None else pooled[rows]
        rows = rows.cpu()
        hiddens, pooled = [], None
        for encoder, ids, masks in zip(encoders, self.ids, self.masks):
            ids = ids[rows].to(device)
            if self.xl:
                out = encoder(ids, output_hidden_states=True)
                if pooled is None and out[0].ndim == 2:
                    pooled = out[0]
                hiddens.append(out.hidden_states[-2])
            else:
                config = getattr(encoder, "config", None) or _unwrapped(encoder).config
                mask = masks[rows].to(device) if getattr(config, "use_attention_mask", False) else None
                hiddens.append(encoder(ids, attention_mask=mask)[0])
        return torch.cat(hiddens, dim=-1), pooled

    @torch.no_grad()
    def cache(self, encoders: list, device, chunk: int = 16) -> None:
        """Encode every caption once; `encode` answers from the cache from then on."""
        hidden, pooled = [], []
        for start in range(0, len(self.texts), chunk):
            rows = torch.arange(start, min(start + chunk, len(self.texts)))
            h, p = self.encode(encoders, rows, device)
            hidden.append(h)
            if p is not None:
                pooled.append(p)
        self.cached = (torch.cat(hidden), torch.cat(pooled) if pooled else None)


def _unwrapped(module):
    return getattr(module, "module", module)
