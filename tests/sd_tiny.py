"""Tiny Stable Diffusion models built with diffusers and transformers (random weights, no
download), laid out exactly as the real v1 and v2 ones are: the references of the SD tests."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ldmkit.io.sd_configs import SD_SCHEDULER_CONFIGS, SD_X4_SCHEDULER_CONFIG

# A 32-token BPE vocabulary in CLIP's format: enough for the prompts the tests use.
VOCAB = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "a", "p", "h", "c", "k", "lo", "l</w>", "w</w>",
         "r</w>", "t</w>", "a</w>", "o</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider",
         "<unk>", "<|startoftext|>", "<|endoftext|>", "!", "!</w>"]
PROMPT, NEGATIVE = "a lower photo of a cat", "newer"


def write_tokenizer(folder: Path, pad_token: str | None = None) -> Path:
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    (folder / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=16)
    if pad_token:
        tokenizer.pad_token = pad_token
    tokenizer.save_pretrained(folder)
    return folder


def tiny_sd(version: str = "v1", seed: int = 0, in_channels: int = 4):
    """A diffusers StableDiffusionPipeline of SD `version`'s layout, tiny and random.
    v1: 8 heads, 1x1-conv projections, CLIP with quick_gelu, eps, PNDM-style leading spacing.
    v2: 64-wide heads, linear projections, OpenCLIP-like text model (gelu), v-prediction."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    v2 = version == "v2"
    widths = (64, 128) if v2 else (32, 64)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=widths, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(1, 2) if v2 else 8, use_linear_projection=v2, cross_attention_dim=64, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
        sample_size=16,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=16, hidden_act="gelu" if v2 else "quick_gelu", projection_dim=64,
        bos_token_id=len(VOCAB) - 4, eos_token_id=len(VOCAB) - 3,
    ))
    for module in (unet, vae, text):  # norms and biases random too, so that every weight matters
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    with tempfile.TemporaryDirectory(prefix="tiny-sd-tokenizer-") as tmp:  # the tokenizer keeps its vocab in memory
        folder = write_tokenizer(Path(tmp), "!" if v2 else None)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction" if v2 else "epsilon")
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)



def save_reference(pipe, folder: Path, version: str):
    """Save a diffusers pipeline as SD's folders are laid out; return it as diffusers reads it back."""
    from diffusers import StableDiffusionPipeline

    pipe.save_pretrained(folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER_CONFIGS[version]))
    return StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)


# SD x4 upscaler's two schedulers (its released folder): v-prediction sampling, and the schedule
# that noises the low-resolution input.
UPSCALER_SCHEDULERS = {
    "scheduler": SD_X4_SCHEDULER_CONFIG,
    "low_res_scheduler": {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "scaled_linear",
                          "beta_start": 0.0001, "clip_sample": False, "num_train_timesteps": 1000},
}


def tiny_upscaler(folder: Path):
    """A tiny StableDiffusionUpscalePipeline (7-channel UNet, noise level as class label, an f = 4
    VAE), saved as its released folder is laid out; returned as diffusers reads it back."""
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline,
                           UNet2DConditionModel)

    base = tiny_sd("v2")
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(1, 2), use_linear_projection=True, cross_attention_dim=64, norm_num_groups=32,
        num_class_embeds=1000,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
                        latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32, scaling_factor=0.08333)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler.from_config(UPSCALER_SCHEDULERS["low_res_scheduler"]),
        scheduler=DDIMScheduler.from_config(UPSCALER_SCHEDULERS["scheduler"]), max_noise_level=350,
    )
    pipe.save_pretrained(folder)
    for name, config in UPSCALER_SCHEDULERS.items():
        (folder / name / "scheduler_config.json").write_text(json.dumps(config))
    return StableDiffusionUpscalePipeline.from_pretrained(folder, local_files_only=True)
