"""Textual-inversion embeddings: loaded into each text encoder of a model they have vectors for (the
family's text encoders, each with the key its vectors have in an SDXL-layout file: `clip_l`, `clip_g`;
an SD 1.x file holds one tensor, `emb_params` in AUTOMATIC1111's format), and used by writing their
token in a prompt. The models file's are loaded at worker start and stay; an API key's trained ones
(service/adapter_registry.py) only for the jobs whose prompt names them (workers/loras.py)."""

from __future__ import annotations

import logging

from service.catalog import AdapterSpec

log = logging.getLogger("fresco.loras")


def _encoders(model) -> list[tuple]:
    pipe = model.pipe
    found = [(getattr(pipe, te.encoder, None), getattr(pipe, te.tokenizer, None), te.embedding_key)
             for te in model.family.text_encoders]
    return [(te, tok, key) for te, tok, key in found if te is not None]


def load_vectors(model, state: dict, tokens: str | list[str], label: str) -> int:
    """An embedding's vectors (`state`: its file's tensors) into `model`'s text encoders, as `tokens`: how
    many encoders took them. ValueError when the file lacks the vectors of one of them."""
    encoders = _encoders(model)
    for te, tok, key in encoders:
        vectors = state.get(key)
        if vectors is None and len(encoders) == 1:
            vectors = state.get("emb_params", next(iter(state.values())))  # an SD 1.x file: one tensor
        if vectors is None:
            raise ValueError(f"{label}: the embedding has no `{key}` vectors, which model {model.name} needs "
                             f"for each of its text encoders")
        model.pipe.load_textual_inversion(vectors, token=tokens, text_encoder=te, tokenizer=tok)
    return len(encoders)


def unload_vectors(model, token: str) -> None:
    """Take `token` (and the extra tokens of a multi-vector embedding) out of every text encoder of `model`."""
    for te, tok, _ in _encoders(model):
        tokens = [t for t in tok.get_vocab()
                  if t == token or (t.startswith(token + "_") and t[len(token) + 1:].isdigit())]
        if tokens:
            model.pipe.unload_textual_inversion(tokens, tokenizer=tok, text_encoder=te)


def load_embeddings(model, files, specs: list[AdapterSpec]) -> None:
    """`specs`' embeddings into `model`'s text encoders (`files`: workers/adapter_files.py AdapterFiles)."""
    for spec in specs:
        tokens = spec.token[0] if len(spec.token) == 1 else spec.token
        loaded = load_vectors(model, files.named(spec).state_dict(), tokens, f"adapter {spec.name}")
        log.info("loaded embedding %s (%s) into %d text encoder(s) of %s", spec.name, ", ".join(spec.token),
                 loaded, model.name)
