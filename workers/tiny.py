"""The `tiny` model profile: real diffusers pipelines with random weights, built offline in about a second.

Each family's tiny pipelines are built by its family file (`workers/families/<family>.py`, `tiny`); this
module holds what they share (the text encoder, tokenizer, VAE and scheduler configs) and the tiny
ControlNet; `workers/tiny_adapters.py` makes the profile's LoRAs and embeddings. The component configs
start from the tiny configs diffusers' own fast tests use (`../shared/reference/diffusers-configs.json`,
"tiny"), changed so that a job at the API contract's default parameters (SDXL 1024² 30 steps + refiner,
SVD 1024×576 14 frames 25 steps) finishes in a few seconds on a 2-core CPU (the family files say how).

Weights are drawn from a fixed seed, so the same profile gives the same pixels on every machine.
The images are noise by design: the profile checks plumbing, not art.
"""

from __future__ import annotations

import torch

TEXT_ENCODER = dict(
    bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
    num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=1000, hidden_act="gelu",
    projection_dim=32,
)

# The tiny VAE: four blocks, the real 8× downsampling, so latent shapes match the real models' (SDXL's
# scaling; the SD family file changes it to SD's).
VAE = dict(
    block_out_channels=(4, 4, 8, 8), in_channels=3, out_channels=3, layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4, norm_num_groups=4, sample_size=1024, scaling_factor=0.13025, force_upcast=False,
)

SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
    timestep_spacing="leading",
)

# The T5 v1.1 encoder of SD 3 and FLUX.1 (T5-XXL: 4096 wide, gated GELU, relative position buckets), 64
# wide: SD 3 pads its two CLIP encoders' concatenated states (32 + 32) to T5's width, as 768 + 1280 to 4096.
T5_ENCODER = dict(
    vocab_size=128, d_model=64, d_kv=16, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    relative_attention_max_distance=32, feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0,
    eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False, use_cache=False,
)

# A ControlNet's conditioning embedding downsamples the control image 8× (to the latents' size).
CONTROLNET_EMBEDDING = (4, 4, 8, 8)


def tokenizer():
    """An offline CLIP tokenizer: byte-level vocabulary, no merges, EOT with the largest id."""
    from transformers import CLIPTokenizer

    chars = [chr(i) for i in range(256)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    """An offline T5 tokenizer (a Unigram model, as T5's SentencePiece one is): <pad> 0, </s> 1, <unk> 2,
    then printable ASCII and the word-initial lower-case letters ("▁a"); anything else is <unk>. 512 tokens
    long, as FLUX.1-dev's `max_sequence_length` may be."""
    from transformers import T5TokenizerFast

    pieces = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(chr(c), -1.0) for c in range(32, 127)]
              + [("\u2581" + chr(c), -1.0) for c in range(97, 123)] + [("\u2581", -2.0)])
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def seeded(seed: int):
    torch.manual_seed(seed)


def controlnet(unet, seed: int):
    """A ControlNet for the tiny UNet `unet` (SD or SDXL): its encoder copied, its zero-initialised output
    convolutions random, as a trained ControlNet's no longer are, and its conditioning embedding (the
    control image's path in) with He-scaled random weights, its last layer 8x stronger, so that what it
    adds is the size of the latents it is added to. At diffusers' init that last layer is zero, and at
    the default scale its eight narrow layers shrink the image's signal to 1e-4: the control image would
    not reach the model (tests/workers/test_control.py checks that it does)."""
    from diffusers import ControlNetModel

    seeded(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
            elif name.startswith("controlnet_cond_embedding") and name.endswith("weight"):
                gain = 8.0 if "conv_out" in name else 1.0  # as strong as the latents it is added to
                param.copy_(torch.randn(param.shape, generator=generator) * gain * (2 / param[0].numel()) ** 0.5)
    return net
