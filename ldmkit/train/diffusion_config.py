"""Typed configs of a latent diffusion training run, and named presets (the model's own config
is ldmkit.model.LatentDiffusionConfig)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..data.shapes import DEFAULT_HOLDOUT
from ..diffusion.schedule import ScheduleConfig
from ..model.config import LatentDiffusionConfig, LowResConfig
from ..nets.config import UNET_PRESETS, UNetConfig
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
    autoencoder: str = "models/autoencoders/fmnist-kl-f4"  # the frozen first stage; "pixel": none (GLIDE)
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
        if self.model.conditioning == "image-embedding" and self.model.task != "generation":
            raise ValueError(f"an unCLIP decoder (image-embedding conditioning) is trained for generation here, not "
                             f"{self.model.task}")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")


TINY_UNET = replace(UNET_PRESETS["tiny"], context_dim=384)
# GLIDE (Nichol et al. 2022) on Fashion-MNIST, in pixel space (autoencoder "pixel": f = 1): the
# MiniLM tokens join each self-attention's keys and values (added_kv) and the last token's state the
# time embedding (pooled); 20% caption dropout for guidance. The base makes 16x16 images (area-averaged
# from 32x32) on GLIDE's cosine schedule; the x2 upsampler, text-conditioned, takes them to 32x32 on
# the linear one (GLIDE's two choices), its low-res input noise-augmented as fashion-mnist-x4's. The
# upsampler predicts v (Salimans & Ho 2022; Imagen Video's super-resolution stages), not GLIDE's eps: with eps
# its x0 estimate at t = 999 is the error divided by sqrt(alpha_bar) = 0.006, and the shapes x2 ignored
# its input on most seeds (docs/glide.md, "The upsampler predicts v").
# The cross-attention ablation: --set model.net.text_attention=cross (pooled stays).
# Sized by measured steps of batch 64 with OMP_NUM_THREADS=1 on this machine's 2-core AMD EPYC, shared
# with two other training jobs (load ~6.8), so CPU seconds (wall time 1.1-1.5x that): base, 16x16, widths
# 64/128 at 2 ResBlocks 2.6 CPU-s/step, 48 at 1 ResBlock 1.0, this one (32, 1 ResBlock, 2.0 M
# parameters) 0.51-0.63 (cross-attention ablation 0.70); train_diffusion, steps 10-30, 0.75 wall-s/step.
# 5,000 steps: ~45-55 min. Upsampler, 32x32: width 32 1.4-1.5 CPU-s/step, this one (16/32/64, 1.2 M)
# 0.88-0.95, train_diffusion 0.93 wall-s/step; 3,000 steps: ~45 min.
GLIDE_UNET = UNetConfig(in_channels=1, out_channels=1, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                        attn_levels=(1, 2), num_heads=None, head_dim=32, context_dim=384,
                        text_attention="added_kv", pooled_dim=384, norm_groups=16)
GLIDE_BASE = LatentDiffusionConfig(net=GLIDE_UNET, schedule=ScheduleConfig(kind="cosine"), image_size=16)
GLIDE_X2_UNET = UNetConfig(in_channels=2, out_channels=1, base_channels=16, channel_mult=(1, 2, 4),
                           num_res_blocks=1, attn_levels=(2,), num_heads=None, head_dim=32, context_dim=384,
                           text_attention="added_kv", pooled_dim=384, num_classes=351, norm_groups=8)
GLIDE_X2 = LatentDiffusionConfig(
    net=GLIDE_X2_UNET, schedule=ScheduleConfig(kind="linear", beta_start=0.0001, beta_end=0.02), image_size=32,
    task="upscaling", lowres=LowResConfig(channels=1, max_noise_level=350, noise_level=0, upscale_factor=2),
    prediction="v",
)
TINY_GLIDE_UNET = UNetConfig(in_channels=1, out_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                             attn_levels=(1,), num_heads=2, context_dim=384, text_attention="added_kv",
                             pooled_dim=384, norm_groups=8)
# The shipped models: sized to train in well under an hour on a 2-core CPU (timings: docs/stage2.md).
COMPACT = LatentDiffusionConfig(net=UNET_PRESETS["compact"])
# DALL-E 2's decoder (unCLIP, Ramesh et al. 2022): fashion-mnist's UNet on the same latents, conditioned on
# each image's clip-small image embedding (128-d, normalised), added to the time embedding and projected
# into 4 context tokens (128 wide) that cross-attention reads; 10% of embeddings dropped to zero for guidance.
# Sized by measured steps of batch 64 with OMP_NUM_THREADS=1 on this machine's 2-core AMD EPYC, shared with
# other training jobs (load 4-5: wall time 2.5-3.5x CPU time), in CPU seconds: forward + backward + AdamW on
# random inputs 0.30-0.34 a step (3.9 M parameters; fashion-mnist's text UNet 0.33-0.36 beside it);
# train_diffusion on 2,048 images, 10 vs 40 steps, 0.23-0.31 a step. 7,000 steps: ~30-36 CPU-min, plus
# embedding the 60,000 images once with clip-small (~3.5 min) and encoding their latents and the 7 sample
# grids (~2 min): ~36-42 min on one thread.
UNCLIP_DECODER = LatentDiffusionConfig(
    net=replace(UNET_PRESETS["compact"], context_dim=128, pooled_dim=128, pooled_tokens=4),
    conditioning="image-embedding", embedding_clip="clip-small",
)
TINY_UNCLIP_DECODER = LatentDiffusionConfig(
    net=replace(UNET_PRESETS["tiny"], pooled_dim=128, pooled_tokens=4), conditioning="image-embedding",
    embedding_clip="clip-small",
)
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
    # the same DiT on fashion-mnist's latents and recipe (7,000 steps of 64): the family table's LDM-DiT row
    "fashion-mnist-dit": DiffusionTrainConfig(
        model=LatentDiffusionConfig(net=DIT_PRESETS["cpu-text"]), steps=7000, lr=3e-4, warmup_steps=500,
        min_snr_gamma=5.0,
    ),
    # 4x super-resolution, 8x8 -> 32x32: the low-res image joined to the 8x8 latents (LDM sec. 4.4)
    "fashion-mnist-x4": DiffusionTrainConfig(
        model=LatentDiffusionConfig(
            net=replace(UNET_PRESETS["compact"], in_channels=5, context_dim=None, num_classes=351),
            conditioning="none", task="upscaling",
            lowres=LowResConfig(channels=1, max_noise_level=350, noise_level=0),
            prediction="v",  # as the GLIDE upsamplers: eps drifted off its input on some seeds (docs/glide.md)
        ),
        steps=4000, lr=3e-4, min_snr_gamma=5.0, guidance=1.0,
    ),
    # 9-channel inpainting (z_t, mask, masked image's latent) started from the shipped model
    "fashion-mnist-inpaint": DiffusionTrainConfig(
        model=replace(COMPACT, net=replace(UNET_PRESETS["compact"], in_channels=9), task="inpainting"),
        autoencoder="models/autoencoders/fmnist-kl-f4-gan-decoder", init_from="models/fashion-mnist-f4",
        steps=3000, lr=1e-4, warmup_steps=100, min_snr_gamma=5.0,
    ),
    # GLIDE in pixel space, base and x2 upsampler (sizes and timings: GLIDE_UNET above)
    "fashion-mnist-glide": DiffusionTrainConfig(
        model=GLIDE_BASE, autoencoder="pixel", steps=5000, lr=3e-4, cond_dropout=0.2, min_snr_gamma=5.0,
    ),
    "fashion-mnist-glide-x2": DiffusionTrainConfig(
        model=GLIDE_X2, autoencoder="pixel", steps=3000, lr=3e-4, cond_dropout=0.2, min_snr_gamma=5.0,
        guidance=1.0,
    ),
    # the same cascade on shapes' RGB renders (the family's shapes table): 16x16 base, x2 to 32x32
    "shapes-glide": DiffusionTrainConfig(
        model=replace(GLIDE_BASE, net=replace(GLIDE_UNET, in_channels=3, out_channels=3)), autoencoder="pixel",
        data=DiffusionDataConfig(dataset="shapes", limit=20_000), steps=5000, lr=3e-4, cond_dropout=0.2,
        min_snr_gamma=5.0,
    ),
    "shapes-glide-x2": DiffusionTrainConfig(
        model=replace(GLIDE_X2, net=replace(GLIDE_X2_UNET, in_channels=6, out_channels=3),
                      lowres=replace(GLIDE_X2.lowres, channels=3)),
        autoencoder="pixel", data=DiffusionDataConfig(dataset="shapes", limit=20_000), steps=3000, lr=3e-4,
        cond_dropout=0.2, min_snr_gamma=5.0, guidance=1.0,
    ),
    # unCLIP decoders (DALL-E 2): images from clip-small image embeddings (UNCLIP_DECODER above)
    "fashion-mnist-unclip-decoder": DiffusionTrainConfig(
        model=UNCLIP_DECODER, steps=7000, lr=3e-4, min_snr_gamma=5.0, cond_dropout=0.1,
    ),
    "shapes-unclip-decoder": DiffusionTrainConfig(
        model=UNCLIP_DECODER, autoencoder="models/autoencoders/shapes-kl-f4",
        data=DiffusionDataConfig(dataset="shapes", limit=20_000), steps=7000, lr=3e-4,
        min_snr_gamma=5.0, cond_dropout=0.1,
    ),
    "tiny": DiffusionTrainConfig(
        model=LatentDiffusionConfig(net=TINY_UNET),
        data=DiffusionDataConfig(limit=64),
        steps=4, batch_size=8, warmup_steps=1, log_every=1, sample_every=2, checkpoint_every=2,
    ),
    "tiny-glide": DiffusionTrainConfig(
        model=LatentDiffusionConfig(net=TINY_GLIDE_UNET, schedule=ScheduleConfig(kind="cosine"), image_size=8),
        autoencoder="pixel", data=DiffusionDataConfig(limit=64), cond_dropout=0.2,
        steps=4, batch_size=8, warmup_steps=1, log_every=1, sample_every=2, checkpoint_every=2,
    ),
    "tiny-unclip-decoder": DiffusionTrainConfig(
        model=TINY_UNCLIP_DECODER, data=DiffusionDataConfig(limit=64), cond_dropout=0.1,
        steps=4, batch_size=8, warmup_steps=1, log_every=1, sample_every=4, checkpoint_every=2,
    ),
    "tiny-dit": DiffusionTrainConfig(
        model=LatentDiffusionConfig(net=DIT_PRESETS["tiny-text"]),
        data=DiffusionDataConfig(limit=64),
        steps=4, batch_size=8, warmup_steps=1, log_every=1, sample_every=2, checkpoint_every=2,
    ),
}
