"""Typed configs of a first-stage training run, and named presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..autoencoders.config import AE_PRESETS, AutoencoderConfig

DATASETS = ("fashion-mnist", "photos", "shapes", "folder")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"  # fashion-mnist | photos (scikit-image crops) | shapes | folder
    path: str | None = None  # the folder, for dataset="folder"
    size: int = 32  # images are size x size (Fashion-MNIST: padded to it)
    limit: int | None = None  # use only the first N training images
    eval_images: int = 1000  # held-out images for PSNR / SSIM

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {DATASETS}")
        if self.dataset == "folder" and not self.path:
            raise ValueError("dataset 'folder' needs data.path: the folder of images")


@dataclass(frozen=True)
class AutoencoderLossConfig:
    l1: float = 1.0  # pixel terms (LDM / VQGAN use L1)
    l2: float = 0.0
    kl_weight: float = 1e-6  # kl: weight of KL(q(z|x) || N(0, I)), mean over latent elements
    codebook_weight: float = 1.0  # vq: weight of codebook + beta * commitment
    # auto: disc_features when a discriminator is on, else none (measured: docs/autoencoders.md)
    perceptual: str = "auto"  # auto | none | disc_features | lpips
    perceptual_weight: float = 1.0
    lpips_vgg: str | None = None  # local VGG16 weights, for perceptual="lpips"
    lpips_heads: str | None = None  # local LPIPS linear-head weights
    gan_weight: float = 0.0  # 0: no discriminator at all
    gan_loss: str = "hinge"  # hinge | nonsaturating
    disc_start: int = 0  # step from which the GAN term counts
    adaptive_weight: bool = True  # VQGAN eq. 7
    disc_channels: int = 64
    disc_layers: int = 2
    # batch: taming's BatchNorm (synchronised over GPUs under torchrun; on CPU each process
    # normalises its own share) | group: GroupNorm, the same for any split of the batch
    disc_norm: str = "batch"


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    model: AutoencoderConfig = AE_PRESETS["fmnist-f4"]
    data: DataConfig = DataConfig()
    loss: AutoencoderLossConfig = AutoencoderLossConfig()
    steps: int = 4000
    batch_size: int = 64
    lr: float = 4e-4
    disc_lr: float = 2e-4
    adam_betas: tuple[float, float] = (0.5, 0.9)  # VQGAN's: a short memory suits the GAN game
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # cosine (decay to 0 over the run) | constant, after warm-up
    grad_clip: float | None = 1.0
    seed: int = 0
    log_every: int = 25
    image_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    scale_images: int = 2000  # images to estimate the latent scale factor on
    init_from: str | None = None  # an autoencoder folder to start from (same model config)
    # freeze the encoder: the latent space, and every diffusion model trained in it, stays
    # valid while the decoder learns to draw sharper (SD's fine-tuned VAE decoders)
    train_decoder_only: bool = False
    mixed_precision: str = "no"  # no | bf16 (CPU or GPU) | fp16 (GPU, with a grad scaler)
    max_nonfinite_steps: int = 20  # non-finite steps are skipped; this many in a row stop the run

    def __post_init__(self):
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.model.out_channels != self.model.in_channels:
            raise ValueError(
                f"an autoencoder reconstructs its input: model.out_channels ({self.model.out_channels}) "
                f"must equal model.in_channels ({self.model.in_channels})"
            )
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.loss.disc_norm not in ("batch", "group"):
            raise ValueError(f"loss.disc_norm must be 'batch' or 'group', got {self.loss.disc_norm!r}")
        if self.loss.perceptual not in ("auto", "none", "disc_features", "lpips"):
            raise ValueError(f"unknown perceptual loss {self.loss.perceptual!r}; "
                             f"choose auto, none, disc_features or lpips")
        if self.train_decoder_only and not self.init_from:
            raise ValueError("train_decoder_only needs init_from: the autoencoder whose encoder stays frozen")
        if self.loss.gan_weight == 0 and self.loss.perceptual == "disc_features":
            raise ValueError("perceptual 'disc_features' needs a discriminator: set loss.gan_weight > 0")


TRAIN_PRESETS: dict[str, AutoencoderTrainConfig] = {
    # measured here: batch 32 at lr 1e-3 with cosine decay beats batch 64 at 4e-4 per CPU minute
    "fmnist-kl-f4": AutoencoderTrainConfig(steps=4500, batch_size=32, lr=1e-3),
    # the LDM compression study (docs/compression.md): the same recipe at f = 2 and f = 8,
    # c = 4 latent channels throughout as in fmnist-kl-f4
    "fmnist-kl-f2": AutoencoderTrainConfig(
        model=replace(AE_PRESETS["fmnist-f4"], channel_mult=(1, 2)), steps=4500, batch_size=32, lr=1e-3,
    ),
    "fmnist-kl-f8": AutoencoderTrainConfig(
        model=replace(AE_PRESETS["fmnist-f4"], channel_mult=(1, 2, 2, 2)), steps=4500, batch_size=32, lr=1e-3,
    ),
    "fmnist-vq-f4": AutoencoderTrainConfig(
        model=replace(AE_PRESETS["fmnist-vq-f4"], ema=True, restart_dead_codes=True),
        steps=4500, batch_size=32, lr=1e-3,
    ),
    "photos-kl-f4": AutoencoderTrainConfig(
        model=AutoencoderConfig(kind="kl", in_channels=3, base_channels=32, channel_mult=(1, 2, 2),
                                num_res_blocks=1, norm_groups=8),
        data=DataConfig(dataset="photos", size=32, limit=4096, eval_images=256),
    ),
    # the first stage of the shapes model: flat colours and sharp edges, learnt in minutes
    "shapes-kl-f4": AutoencoderTrainConfig(
        model=AutoencoderConfig(kind="kl", in_channels=3, out_channels=3, base_channels=32,
                                channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8),
        data=DataConfig(dataset="shapes", size=32, limit=8192, eval_images=512),
        steps=1500, batch_size=32, lr=1e-3,
    ),
    # the shapes DALL-E's first stage: the shapes recipe as a VQ with fmnist-vq-f4's 512-code book
    "shapes-vq-f4": AutoencoderTrainConfig(
        model=AutoencoderConfig(kind="vq", in_channels=3, out_channels=3, base_channels=32,
                                channel_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                                codebook_size=512, ema=True, restart_dead_codes=True),
        data=DataConfig(dataset="shapes", size=32, limit=8192, eval_images=512),
        steps=3000, batch_size=32, lr=1e-3,
    ),
    # fmnist-kl-f4's decoder fine-tuned with a PatchGAN and feature matching, encoder frozen:
    # the same latents, sharper images (docs/stage2.md)
    "fmnist-kl-f4-gan-decoder": AutoencoderTrainConfig(
        loss=AutoencoderLossConfig(gan_weight=0.5, disc_start=200, perceptual="disc_features"),
        steps=1500, batch_size=32, lr=2e-4, warmup_steps=50,
        init_from="models/autoencoders/fmnist-kl-f4", train_decoder_only=True,
    ),
    "tiny": AutoencoderTrainConfig(
        model=replace(AE_PRESETS["tiny"], in_channels=1, out_channels=1),
        data=DataConfig(limit=64, eval_images=16),
        steps=4, batch_size=4, warmup_steps=1, log_every=1, image_every=2, checkpoint_every=2,
        scale_images=16,
    ),
}
