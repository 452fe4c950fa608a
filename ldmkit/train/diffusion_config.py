"""Typed configs of a latent diffusion training run, and named presets (the model's own config
is ldmkit.model.LatentDiffusionConfig)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..data.shapes import DEFAULT_HOLDOUT
from ..model.config import LatentDiffusionConfig, LowResConfig
from ..nets.config import UNET_PRESETS
from ..nets.dit_config import DIT_PRESETS

LDM_DATASETS = ("fashion-mnist", "shapes", "folder")


@dataclass(frozen=True)
class DiffusionDataConfig:
    dataset: str = "fashion-mnist"  # fashion-mnist | shapes | folder (your images + captions)
    path: str | None = None  # the folder, for dataset="folder"
    limit: int | None = None  # training images (shapes: how many to draw)
    holdout: tuple[tuple[str, str, str], ...] = DEFAULT_HOLDOUT  # shapes: combinations never trained on

    def __post_init__(self):
        if self.dataset not in LDM_DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {LDM_DATASETS}")
        if self.dataset == "folder" and not self.path:
            raise ValueError("dataset 'folder' needs data.path: a folder of images with .txt captions "
                             "or a metadata.jsonl")


@dataclass(frozen=True)
class DiffusionTrainConfig:
    model: LatentDiffusionConfig = LatentDiffusionConfig()
    autoencoder: str = "models/autoencoders/fmnist-kl-f4"  # the frozen first stage
    init_from: str | None = None  # a model folder whose UNet starts this run (inpainting: conv_in widened)
    data: DiffusionDataConfig = DiffusionDataConfig()
    steps: int = 10_000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    lr_schedule: str = "constant"  # constant (a run may be extended) | cosine (decay to 0 over the run), after warm-up
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1  # share of samples trained unconditionally, for guidance
    min_snr_gamma: float | None = None
    offset_noise: float = 0.0
    seed: int = 0
    log_every: int = 25
    sample_every: int = 1000  # a grid of EMA samples (samples/step_*.png)
    guidance: float = 3.0  # of those grids, and the default the model folder records
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    accumulate: int = 1  # micro-batches per step (gradient accumulation); batch_size is per step
    gradient_checkpointing: bool = False  # recompute block activations in the backward pass: less memory, more compute
    mixed_precision: str = "no"  # no | bf16 (CPU or GPU) | fp16 (GPU, with a grad scaler)
    max_nonfinite_steps: int = 20  # non-finite steps are skipped; this many in a row stop the run
    # under torchrun: ddp (every process holds the whole model) | fsdp (weights, gradients and
    # optimiser state sharded over the processes, for a model too large for one device)
    parallel: str = "ddp"
    latent_cache: str | None = None  # a folder keeping the encoded data set between runs (studies, grids)

    def __post_init__(self):
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.accumulate < 1:
            raise ValueError(f"accumulate must be >= 1 (micro-batches per step), got {self.accumulate}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.data.dataset == "folder" and self.model.conditioning == "class":
            raise ValueError("a folder of captioned images has no class labels: use model.conditioning=text")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")


TINY_UNET = replace(UNET_PRESETS["tiny"], context_dim=384)
# The shipped models: sized to train in well under an hour on a 2-core CPU (timings: docs/stage2.md).
COMPACT = LatentDiffusionConfig(net=UNET_PRESETS["compact"])
DIFFUSION_PRESETS: dict[str, DiffusionTrainConfig] = {
    "fashion-mnist": DiffusionTrainConfig(model=COMPACT, steps=7000, lr=3e-4, min_snr_gamma=5.0),
    "shapes": DiffusionTrainConfig(
        model=COMPACT, autoencoder="models/autoencoders/shapes-kl-f4",
        data=DiffusionDataConfig(dataset="shapes", limit=20_000), steps=6000, lr=3e-4, min_snr_gamma=5.0,
    ),
    # the DiT backbone (PixArt-style text conditioning) on the same data and first stage: DiT-S-like
    # width 256 at patch 2 (16 tokens), 6.0 M parameters
    "shapes-dit": DiffusionTrainConfig(
        model=LatentDiffusionConfig(net=DIT_PRESETS["cpu-text"]), autoencoder="models/autoencoders/shapes-kl-f4",
        data=DiffusionDataConfig(dataset="shapes", limit=20_000), steps=6000, lr=3e-4, warmup_steps=500,
        min_snr_gamma=5.0,
    ),
    # 4x super-resolution, 8x8 -> 32x32: the low-res image joined to the 8x8 latents (LDM sec. 4.4)
    "fashion-mnist-x4": DiffusionTrainConfig(
        model=LatentDiffusionConfig(
            net=replace(UNET_PRESETS["compact"], in_channels=5, context_dim=None, num_classes=351),
            conditioning="none", task="upscaling",
            lowres=LowResConfig(channels=1, max_noise_level=350, noise_level=0),
        ),
        steps=4000, lr=3e-4, min_snr_gamma=5.0, guidance=1.0,
    ),
    # 9-channel inpainting (z_t, mask, masked image's latent) started from the shipped model
    "fashion-mnist-inpaint": DiffusionTrainConfig(
        model=replace(COMPACT, net=replace(UNET_PRESETS["compact"], in_channels=9), task="inpainting"),
        autoencoder="models/autoencoders/fmnist-kl-f4-gan-decoder", init_from="models/fashion-mnist",
        steps=3000, lr=1e-4, warmup_steps=100, min_snr_gamma=5.0,
    ),
    "tiny": DiffusionTrainConfig(
        model=LatentDiffusionConfig(net=TINY_UNET),
        data=DiffusionDataConfig(limit=64),
        steps=4, batch_size=8, warmup_steps=1, log_every=1, sample_every=2, checkpoint_every=2,
    ),
    "tiny-dit": DiffusionTrainConfig(
        model=LatentDiffusionConfig(net=DIT_PRESETS["tiny-text"]),
        data=DiffusionDataConfig(limit=64),
        steps=4, batch_size=8, warmup_steps=1, log_every=1, sample_every=2, checkpoint_every=2,
    ),
}
