"""What a training job asks for (`TrainConfig`), and `check`: the mistakes a config can hold for a given
pipeline, found before any work starts, each a `ValueError` naming the field at fault.

The fields mirror `POST /train` (../shared/design/api.md, "Personalisation: training jobs"): the API's
`trigger` is `trigger` for a LoRA and `token` for an embedding; the API's `validation` object is spread
over the `validation_*` fields.

A new token must come out of each tokenizer as exactly one new id, as diffusers' `load_textual_inversion`
adds it (`tokenizer.add_tokens(token)`), and must not be in a vocabulary already (diffusers refuses to load
such an embedding). Its starting word (`init_token`) must be one existing token in every tokenizer: its
vector is the one the new token starts from.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

METHODS = ("lora", "embedding", "lora+embedding")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class TrainConfig:
    method: str = "lora"            # "lora" | "embedding" | "lora+embedding"
    steps: int = 500
    learning_rate: float = 1e-4
    rank: int = 16
    alpha: float | None = None      # None -> rank
    resolution: int = 512           # side of the training square (buckets keep ~resolution² pixels)
    batch_size: int = 1
    gradient_accumulation: int = 1
    train_text_encoder: bool = False   # LoRA on the text encoder(s) too
    caption_dropout: float = 0.05      # probability a caption is replaced by "" for a sample
    buckets: bool = True               # aspect-ratio buckets (multiples of 64, ~resolution² area); False: squares
    seed: int = 0
    checkpoint_every: int = 100        # 0: never
    validation_prompt: str | None = None
    validation_every: int = 0          # 0: only at the end (when validation_prompt is set)
    validation_images: int = 1
    validation_steps: int = 20         # denoising steps of a validation image
    trigger: str = ""                  # LoRA: words put before every caption ("trigger, caption")
    token: str | None = None           # embedding: the new token, e.g. "<cat>" or "<小奶猫>"
    init_token: str | None = None      # embedding: the existing word its vectors start from; ONE token everywhere
    vectors: int = 1                   # embedding: vectors per token
    min_snr_gamma: float | None = None # min-SNR weighting (5.0 typical); None off
    noise_offset: float = 0.0
    gradient_checkpointing: bool = True
    mixed_precision: str = "auto"      # "auto": bf16 (or fp16) on CUDA, "no" on CPU

    @property
    def trains_lora(self) -> bool:
        return self.method in ("lora", "lora+embedding")

    @property
    def trains_embedding(self) -> bool:
        return self.method in ("embedding", "lora+embedding")

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def caption_trigger(self) -> str:
        """The words every caption starts with: the new token when one is trained, else `trigger`."""
        return (self.token or "") if self.trains_embedding else self.trigger.strip()

    def new_tokens(self) -> list[str]:
        """The tokens an embedding adds, diffusers' multi-vector naming: `token`, `token_1`, … ."""
        if not self.trains_embedding or not self.token:
            return []
        return [self.token] + [f"{self.token}_{i}" for i in range(1, self.vectors)]

    def training_fields(self) -> dict:
        """The fields a checkpoint must agree on to be resumed (everything that changes what a step does)."""
        loose = ("steps", "checkpoint_every", "validation_prompt", "validation_every", "validation_images",
                 "validation_steps", "mixed_precision", "gradient_checkpointing")
        return {k: v for k, v in asdict(self).items() if k not in loose}


def text_encoders(pipe, family=None) -> list[tuple[str, object, object]]:
    """(encoder attribute, text encoder, tokenizer) of each text encoder of `pipe`, in the family's order."""
    if family is not None:
        pairs = [(te.encoder, te.tokenizer) for te in family.text_encoders]
    else:
        pairs = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")]
    found = [(enc, getattr(pipe, enc, None), getattr(pipe, tok, None)) for enc, tok in pairs]
    return [(name, enc, tok) for name, enc, tok in found if enc is not None and tok is not None]


def check(config: TrainConfig, pipe, family=None) -> None:
    """Raise `ValueError` naming the field when `config` cannot train on `pipe` (checks only; changes nothing)."""
    _check_numbers(config)
    prediction = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"model: its scheduler predicts {prediction!r}; training supports "
                         f"{' and '.join(PREDICTION_TYPES)} models")
    encoders = text_encoders(pipe, family)
    if not encoders:
        raise ValueError("model: this pipeline has no text encoder with a tokenizer to train against")
    if config.trains_embedding:
        _check_token(config, encoders)
    elif config.token or config.init_token:
        raise ValueError(f"token: method {config.method!r} trains no embedding; `token` and `init_token` are "
                         f"for the embedding methods")


def _check_numbers(c: TrainConfig) -> None:
    if c.method not in METHODS:
        raise ValueError(f"method: {c.method!r} is not one of {', '.join(METHODS)}")
    positive = {"steps": c.steps, "rank": c.rank, "batch_size": c.batch_size,
                "gradient_accumulation": c.gradient_accumulation, "vectors": c.vectors,
                "validation_images": c.validation_images, "validation_steps": c.validation_steps}
    for name, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: must be a whole number of at least 1, not {value!r}")
    for name, value in {"checkpoint_every": c.checkpoint_every, "validation_every": c.validation_every}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name}: must be a whole number of at least 0 (0: never), not {value!r}")
    if not c.learning_rate > 0:
        raise ValueError(f"learning_rate: must be above 0, not {c.learning_rate!r}")
    if c.alpha is not None and not c.alpha > 0:
        raise ValueError(f"alpha: must be above 0, not {c.alpha!r}")
    if not isinstance(c.resolution, int) or c.resolution < 64 or c.resolution % 64:
        raise ValueError(f"resolution: must be a multiple of 64 (64 or more), not {c.resolution!r}")
    if not 0.0 <= c.caption_dropout < 1.0:
        raise ValueError(f"caption_dropout: must be in [0, 1), not {c.caption_dropout!r}")
    if c.min_snr_gamma is not None and not c.min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma: must be above 0 (or None: off), not {c.min_snr_gamma!r}")
    if not c.noise_offset >= 0:
        raise ValueError(f"noise_offset: must be 0 or more, not {c.noise_offset!r}")
    if c.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision: {c.mixed_precision!r} is not one of {', '.join(MIXED_PRECISION)}")
    if c.validation_prompt is not None and not c.validation_prompt.strip():
        raise ValueError("validation_prompt: empty; leave it out (None) for no validation images")


def _check_token(c: TrainConfig, encoders) -> None:
    token = c.token
    if token is None or not token.strip():
        raise ValueError(f"token: method {c.method!r} trains a new token; give one (the job's `trigger`, "
                         f"e.g. \"<cat>\")")
    if token != token.strip() or any(ch.isspace() for ch in token):
        raise ValueError(f"token: {token!r} holds white space; a token is one word, e.g. \"<cat>\"")
    for name, _, tokenizer in encoders:
        vocab = tokenizer.get_vocab()
        for new in c.new_tokens():
            if new in vocab:
                raise ValueError(f"token: {new!r} is already in the vocabulary of {_tok_name(name)}; choose a new "
                                 f"word (the job's `trigger`), e.g. \"<{token.strip('<>')}-new>\"")
        _check_token_is_whole(c, name, tokenizer)
        if c.init_token is not None:
            _check_init_token(c.init_token, name, tokenizer)


def _check_token_is_whole(c: TrainConfig, name: str, tokenizer) -> None:
    """Once added, the token (and each `token_i`) must encode as its own single id, in a caption too."""
    trial = copy.deepcopy(tokenizer)
    new = c.new_tokens()
    for t in new:
        trial.add_tokens(t)
    ids = [trial.convert_tokens_to_ids(t) for t in new]
    for t, i in zip(new, ids):
        got = trial(f"a {t} b", add_special_tokens=False).input_ids
        if got.count(i) != 1 or trial(t, add_special_tokens=False).input_ids != [i]:
            raise ValueError(f"token: {t!r} does not come out of {_tok_name(name)} as one token once added "
                             f"(it encodes as {trial.tokenize(t)}); choose a simpler word, e.g. \"<cat>\"")
    if c.vectors > 1 and trial.tokenize(c.token) != [c.token]:
        # diffusers' maybe_convert_prompt expands a multi-vector token by the text the tokenizer gives back;
        # a tokenizer that normalises it (lower case, CJK spacing) never expands it at inference.
        raise ValueError(f"vectors: {c.vectors} vectors need a token {_tok_name(name)} keeps as written "
                         f"(it reads {c.token!r} as {trial.tokenize(c.token)}); use 1 vector or a lower-case "
                         f"ASCII token such as \"<cat>\"")


def _check_init_token(init: str, name: str, tokenizer) -> None:
    ids = tokenizer(init, add_special_tokens=False).input_ids
    unknown = getattr(tokenizer, "unk_token_id", None)
    if len(ids) != 1:
        raise ValueError(f"init_token: {init!r} is {len(ids)} tokens in {_tok_name(name)} "
                         f"({tokenizer.convert_ids_to_tokens(ids)}); it must be exactly one existing token")
    if unknown is not None and ids[0] == unknown and init != tokenizer.unk_token:
        raise ValueError(f"init_token: {init!r} is not in the vocabulary of {_tok_name(name)} (it reads as the "
                         f"unknown token); choose a word it knows")


def _tok_name(encoder: str) -> str:
    return "the tokenizer" if encoder == "text_encoder" else f"the tokenizer of {encoder}"
