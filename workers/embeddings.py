"""Textual-inversion embeddings: loaded at worker start into each text encoder of a model they have
vectors for (the family's text encoders, each with the key its vectors have in an SDXL-layout file:
`clip_l`, `clip_g`; an SD 1.x file holds one tensor), and used by writing their token in a prompt."""

from __future__ import annotations

import logging

from service.catalog import AdapterSpec

log = logging.getLogger("fresco.loras")


def load_embeddings(model, files, specs: list[AdapterSpec]) -> None:
    """`specs`' embeddings into `model`'s text encoders (`files`: workers/adapter_files.py AdapterFiles)."""
    pipe = model.pipe
    for spec in specs:
        state = files.named(spec).state_dict()
        encoders = [(getattr(pipe, te.encoder, None), getattr(pipe, te.tokenizer, None), te.embedding_key)
                    for te in model.family.text_encoders]
        encoders = [(te, tok, key) for te, tok, key in encoders if te is not None]
        loaded = 0
        for te, tok, key in encoders:
            vectors = state.get(key)
            if vectors is None and len(encoders) == 1:
                vectors = next(iter(state.values()))  # an SD 1.x file: one tensor
            if vectors is None:
                raise ValueError(f"adapter {spec.name}: the embedding has no `{key}` vectors, which model "
                                 f"{model.name} needs for each of its text encoders")
            tokens = spec.token[0] if len(spec.token) == 1 else spec.token
            pipe.load_textual_inversion(vectors, token=tokens, text_encoder=te, tokenizer=tok)
            loaded += 1
        log.info("loaded embedding %s (%s) into %d text encoder(s) of %s", spec.name, ", ".join(spec.token),
                 loaded, model.name)
