"""Stable Diffusion v1.5 and v2.1 (768-v) as diffusers builds them, with random weights: the
references of benchmarks/sd_parity.py and benchmarks/sd_speed.py.

No SD weights or CLIP vocabulary are needed (the benchmark machines have neither, and no
network): each model is built from its published config, seeded, and saved as a diffusers
folder laid out as the real ones are. The CLIP tokenizer is a stand-in with a 32-token
vocabulary (ids < 49408, so it fits the real 49408-row embedding) padding to 77 tokens.

size "full" is the real architecture (minutes, GBs); "tiny" keeps the layout (block types,
head layout, projections, activations, scheduler) at widths of tens, so that a script can be
checked in seconds; they follow tiny_sd (below), the tests' models. "small" is the full layout (four
UNet levels, two resnets each, the same block types and heads; the four-level VAE) at a fifth
of SD's UNet widths and a quarter of its VAE's, with a 4-layer 256-wide CLIP: a CPU-sized SD
whose layers are wide enough for the matmuls to be realistic (benchmarks/vs_diffusers.py).

tiny_sd and tiny_upscaler are the references of the SD tests (tests/io/test_stable_diffusion.py and
others): tiny diffusers pipelines with every parameter perturbed and a 16-token tokenizer.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ldmkit.io.sd_configs import SD_SCHEDULER_CONFIGS, SD_X4_SCHEDULER_CONFIG

SHAPES = ("sd-v1.5", "sd-v2.1-v")
PROMPT, NEGATIVE = "a lower photo of a cat", "newer"
TEXT_LENGTH = 77  # CLIP's context: every SD prompt is padded to 77 tokens

# The stand-in tokenizer's BPE vocabulary: enough for PROMPT and NEGATIVE.
VOCAB = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "a", "p", "h", "c", "k", "lo", "l</w>", "w</w>",
         "r</w>", "t</w>", "a</w>", "o</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider",
         "<unk>", "<|startoftext|>", "<|endoftext|>", "!", "!</w>"]
BOS, EOS = VOCAB.index("<|startoftext|>"), VOCAB.index("<|endoftext|>")


@dataclass(frozen=True)
class SDShape:
    """The constructor arguments of one SD model's three networks (diffusers / transformers)."""

    name: str
    version: str  # "v1" | "v2": scheduler config and tokenizer padding
    unet: dict    # UNet2DConditionModel(**unet)
    vae: dict     # AutoencoderKL(**vae)
    text: dict    # CLIPTextConfig(**text)

    @property
    def latent_size(self) -> int:
        """The UNet's native latent size: 64 (512 px) for v1.5, 96 (768 px) for v2.1-v."""
        return self.unet["sample_size"]

    @property
    def context_dim(self) -> int:
        return self.unet["cross_attention_dim"]


SD_VAE = dict(  # SD's KL-f8 autoencoder, shared by v1 and v2
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    scaling_factor=0.18215,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    scaling_factor=0.18215,
)
SMALL_VAE = SD_VAE | dict(block_out_channels=(32, 64, 128, 128), sample_size=256)
TINY_BLOCKS = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def model_shape(name: str, size: str = "full") -> SDShape:
    """SD v1.5 (8 heads, 1x1-conv projections, OpenAI CLIP ViT-L/14 with quick_gelu, eps) or
    SD v2.1-v (64-wide heads, linear projections, OpenCLIP ViT-H/14 text tower less its last
    layer, gelu, v-prediction); sizes "small" and "tiny" keep each layout at smaller widths."""
    v2 = name == "sd-v2.1-v"
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; choose one of {SHAPES}")
    if size == "full":
        unet = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, in_channels=4, out_channels=4,
                    attention_head_dim=(5, 10, 20, 20) if v2 else 8, cross_attention_dim=1024 if v2 else 768,
                    sample_size=96 if v2 else 64, use_linear_projection=v2, upcast_attention=v2)
        text = dict(vocab_size=49408, hidden_size=1024 if v2 else 768, intermediate_size=4096 if v2 else 3072,
                    num_hidden_layers=23 if v2 else 12, num_attention_heads=16 if v2 else 12,
                    projection_dim=1024 if v2 else 768)
        vae = SD_VAE
    elif size == "small":  # SD's layout and block types (diffusers' defaults) at CPU widths
        unet = dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, in_channels=4, out_channels=4,
                    attention_head_dim=(1, 2, 4, 4) if v2 else 8, cross_attention_dim=256, sample_size=32,
                    use_linear_projection=v2, upcast_attention=v2)
        text = dict(vocab_size=len(VOCAB), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                    num_attention_heads=4, projection_dim=256)
        vae = SMALL_VAE
    elif size == "tiny":
        unet = dict(block_out_channels=(64, 128) if v2 else (32, 64), layers_per_block=1, in_channels=4, out_channels=4,
                    attention_head_dim=(1, 2) if v2 else 8, cross_attention_dim=64, sample_size=8,
                    use_linear_projection=v2, upcast_attention=v2, norm_num_groups=32, **TINY_BLOCKS)
        text = dict(vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=1, projection_dim=64)
        vae = TINY_VAE
    else:
        raise ValueError(f"size must be 'full', 'small' or 'tiny', got {size!r}")
    text |= dict(max_position_embeddings=TEXT_LENGTH, hidden_act="gelu" if v2 else "quick_gelu",
                 bos_token_id=BOS, eos_token_id=EOS)  # the stand-in tokenizer's ids (pooled output only)
    return SDShape(name, "v2" if v2 else "v1", unet, vae, text)


def write_tokenizer(folder: Path, pad_token: str | None = None, max_length: int = TEXT_LENGTH) -> Path:
    """The stand-in CLIP tokenizer (real SD's has 49408 tokens; none is on the machine), padding
    to `max_length` tokens (the tests' tiny models: 16)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    (folder / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=max_length)
    if pad_token:
        tokenizer.pad_token = pad_token
    tokenizer.save_pretrained(folder)
    return folder


def perturb_(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Norm scales and biases are initialised to exactly 1 and 0, so a weight loaded into the wrong
    one of them could go unseen: move every 1-D parameter off its init. Weight matrices are
    random already, scaled by fan-in (adding 0.05 there, as the tiny tests do, would make a
    1280-wide layer's weights ten times their init)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.add_(scale * torch.randn_like(p))


def build_diffusers(shape: SDShape, tokenizer_folder: Path, seed: int = 0):
    """A diffusers StableDiffusionPipeline of `shape`, random weights (seeded), SD's scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet, vae = UNet2DConditionModel(**shape.unet), AutoencoderKL(**shape.vae)
    text = CLIPTextModel(CLIPTextConfig(**shape.text))
    for module in (unet, vae, text):
        perturb_(module)
    write_tokenizer(tokenizer_folder, pad_token="!" if shape.version == "v2" else None)  # OpenCLIP pads with "!"
    scheduler_cls = {"v1": PNDMScheduler, "v2": DDIMScheduler}[shape.version]
    return StableDiffusionPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True),
        scheduler=scheduler_cls.from_config(SD_SCHEDULER_CONFIGS[shape.version]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_reference(pipe, folder: Path, version: str) -> Path:
    """Save a diffusers pipeline as SD's folders are laid out: the scheduler config verbatim."""
    pipe.save_pretrained(folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER_CONFIGS[version]))
    return folder


def load_reference(folder: Path):
    """The pipeline as diffusers reads the folder back: the reference."""
    from diffusers import StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    return ref


def make_reference(shape: SDShape, folder: Path, seed: int = 0):
    """(reference pipeline, its diffusers folder folder/"model"). The built copy is freed before
    diffusers reads the folder back, so that two full models are never held at once."""
    pipe = build_diffusers(shape, folder / "stand-in-tokenizer", seed)
    model = save_reference(pipe, folder / "model", shape.version)
    del pipe
    gc.collect()
    return load_reference(model), model


# ---- the tests' tiny models ---------------------------------------------------------------
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
        folder = write_tokenizer(Path(tmp), "!" if v2 else None, max_length=16)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction" if v2 else "epsilon")
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


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
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

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


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- measuring -----------------------------------------------------------------------------
def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|: the error on the scale of the reference's output."""
    ours, theirs = ours.detach().float(), theirs.detach().float()
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def peak_rss_gib() -> float:
    """This process's peak resident memory so far: VmHWM on Linux, else ru_maxrss. ru_maxrss is
    not this program's own peak in a child process: at exec it takes over the peak of the
    process that started it (getrusage(2)), so a fresh child of a 10 GB benchmark would report
    10 GB. VmHWM belongs to the address space exec made, so it starts from zero."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return ru_maxrss_gib()


def ru_maxrss_gib() -> float:
    """getrusage's peak RSS (KiB on Linux): includes the parent's peak in a child, see above."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@contextmanager
def timed(times: dict, name: str):
    """Add the wall seconds of the block to times[name]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times[name] = round(times.get(name, 0.0) + time.perf_counter() - start, 3)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform says."""
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        if names:
            return names[0]
    return platform.processor()


def machine() -> dict:
    """What the numbers were measured on."""
    import diffusers
    import transformers

    return {
        "platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
    }


def quiet(diffusers: bool = True) -> None:
    """No deprecation chatter or progress bars from transformers (and diffusers, which a process
    measuring ldmkit's memory must not import) in the tables."""
    import warnings

    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    loggers = [transformers_logging]
    if diffusers:
        from diffusers.utils import logging as diffusers_logging

        loggers.append(diffusers_logging)
    for logging in loggers:
        logging.set_verbosity_error()
        logging.disable_progress_bar()
