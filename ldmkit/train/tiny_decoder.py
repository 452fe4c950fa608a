"""Distilling a tiny decoder (TAESD layout) from a model's first stage.

The teacher is frozen. Each step draws a batch of training images and makes their latents at the
diffusion model's scale, z0 = s * E(x) (the posterior mean); a share of the rows gets noise,
z0 + sigma * eps, since what a sampler hands the decoder (an x0 estimate mid-way, a final sample)
lies off the encoder's outputs. The tiny decoder learns the teacher's decode of the very same
latent, D(z0 / s) clamped to [-1, 1] (MSE + a small L1); the tiny encoder, learnt alongside so the
folder is a whole tiny autoencoder, learns z0 from the image (MSE). The batch (drawn with replacement)
and the noise come from generators seeded by (seed, step), so a resumed run takes the steps an uninterrupted one does.

A run folder holds log.jsonl, loss.png, checkpoints/ and, at the end, model/ (a tiny-autoencoder
folder whose config.json records the teacher's decoder fingerprint and the measured figures) and
metrics.json: PSNR against the teacher's decode on held-out images, decode speeds on one thread.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..autoencoders import Autoencoder, AutoencoderConfig
from ..autoencoders.tiny import TinyAutoencoder
from ..config import from_dict, to_dict
from ..io.taesd_files import KIND
from ..metrics import psnr
from ..model.folder import BUNDLED, MODELS_DIR, resolve_repo_path
from ..pipelines.tiny_decoder import decoder_fingerprint
from ..storage import CheckpointError, load_checkpoint, save_checkpoint
from .autoencoder import load_images
from .autoencoder_config import DataConfig
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_module
from .logging import JsonlLog, plot_losses
from .steps import NonFiniteSteps, fused_adam, learning_rate, step_generator
from .tiny_decoder_config import TinyDecoderTrainConfig, tiny_architecture


def load_teacher(name: str) -> tuple[Autoencoder, str | None]:
    """(the first stage, its data set's name) of a shipped model, a model folder or an autoencoder folder."""
    folder = MODELS_DIR / name if name in BUNDLED else resolve_repo_path(name)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no model {name!r}: give a shipped model {list(BUNDLED)}, a model folder or an "
                                "autoencoder folder (config.json + model.safetensors)")
    states, meta, _ = load_checkpoint(folder)
    if meta.get("type") not in ("latent-diffusion", "autoencoder") or "autoencoder" not in states:
        raise CheckpointError(f"{folder} holds neither a latent diffusion model nor an autoencoder "
                              f"(type {meta.get('type')!r}); a tiny decoder is distilled from a first stage")
    config = from_dict(AutoencoderConfig, meta["autoencoder"])
    if config.kind == "pixel":
        raise ValueError(f"{folder} diffuses in pixel space: it has no decoder to distil")
    teacher = Autoencoder(config)
    teacher.load_state_dict(states["autoencoder"])
    dataset = meta.get("dataset") or ((meta.get("train") or {}).get("data") or {}).get("dataset")
    return teacher.eval().requires_grad_(False), dataset


def _teacher_latents(teacher: Autoencoder, x: torch.Tensor, noisy_rows: int, noise_max: float,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z0, z0 with its last `noisy_rows` rows noised, the teacher's decode of that in [-1, 1])."""
    with torch.no_grad():
        z0 = teacher.to_latent(x)                                                  # (B, c, H/f, W/f)
        sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * noise_max
        sigma[: len(x) - noisy_rows] = 0
        z0_in = z0 + sigma * torch.randn(z0.shape, generator=gen)
        return z0, z0_in, teacher.from_latent(z0_in).clamp(-1, 1)                  # (B, C, H, W)


def _cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform says."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                 if line.startswith("model name")]
        if names:
            return names[0]
    return platform.processor() or platform.machine()


@torch.no_grad()
def decode_speed(decode, z: torch.Tensor, seconds: float = 2.0) -> float:
    """Images per second of `decode` on batch z, one thread (after a warm-up call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decode(z)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            decode(z)
            count += len(z)
        return count / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def evaluate_tiny(tiny: TinyAutoencoder, teacher: Autoencoder, images: torch.Tensor, noise_max: float,
                  speed_images: int, speed_seconds: float) -> dict[str, float | str]:
    """PSNR (dB) of the tiny decode against the teacher's on held-out latents (clean and noised), of
    both against the images, of the teacher decoding the tiny encoder's latents; decode speeds."""
    tiny.eval()
    gen = torch.Generator().manual_seed(12345)
    z0 = teacher.to_latent(images)
    z_noisy = z0 + noise_max * torch.randn(z0.shape, generator=gen)
    full, full_noisy = teacher.from_latent(z0).clamp(-1, 1), teacher.from_latent(z_noisy).clamp(-1, 1)
    fast, fast_noisy = tiny.decode(z0).clamp(-1, 1), tiny.decode(z_noisy).clamp(-1, 1)
    via_tiny_encoder = teacher.from_latent(tiny.encode(images)).clamp(-1, 1)
    z_speed = z0[:speed_images]
    full_speed = decode_speed(teacher.from_latent, z_speed, speed_seconds)
    tiny_speed = decode_speed(tiny.decode, z_speed, speed_seconds)
    return {
        "psnr_vs_full_decoder": psnr(fast, full).mean().item(),
        "psnr_vs_full_decoder_noised": psnr(fast_noisy, full_noisy).mean().item(),
        "psnr_full_decoder_vs_images": psnr(full, images).mean().item(),
        "psnr_tiny_decoder_vs_images": psnr(fast, images).mean().item(),
        "psnr_tiny_encoder_full_decoder_vs_full": psnr(via_tiny_encoder, full).mean().item(),
        "full_decode_images_per_s": full_speed,
        "tiny_decode_images_per_s": tiny_speed,
        "speedup": tiny_speed / full_speed,
        "speed_batch": len(z_speed),
        "cpu": _cpu_name(),
        "decoder_params": sum(p.numel() for p in tiny.decoder.parameters()),
        "full_decoder_params": sum(p.numel() for n, p in teacher.named_parameters()
                                   if not n.startswith(("encoder.", "quant_conv."))),
    }


def distill_tiny_decoder(config: TinyDecoderTrainConfig, run_dir: str | Path, resume: bool = True,
                         progress: bool = True, max_steps: int | None = None) -> dict:
    """Distil, or resume distilling, a tiny decoder in `run_dir` (CPU); returns the final metrics
    ({} when max_steps stops the run early: it is then unfinished but resumable)."""
    run_dir = Path(run_dir)
    teacher, teacher_dataset = load_teacher(config.model)
    dataset = config.dataset or teacher_dataset
    if dataset is None:
        raise ValueError(f"{config.model} does not record its data set: set dataset=fashion-mnist | shapes | ...")
    image_channels = teacher.config.in_channels
    data = DataConfig(dataset=dataset, limit=config.data_limit, eval_images=config.eval_images)
    train_images, eval_images = load_images(data, image_channels)
    f = teacher.config.downsampling_factor

    torch.manual_seed(config.seed)  # the initial weights
    tiny = TinyAutoencoder(tiny_architecture(config, f, image_channels, teacher.config.z_channels))
    opt = fused_adam(tiny.parameters(), lr=config.lr)
    log = JsonlLog(run_dir / "log.jsonl")
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps)
    start, seconds_before = resume_module(run_dir, config, resume, tiny, "tiny", opt, nonfinite, log)
    end = config.steps if max_steps is None else min(config.steps, max_steps)
    noisy_rows = round(config.noisy_fraction * config.batch_size)
    t0 = time.perf_counter()

    def save_state(done: int) -> None:
        train_state = {"step": done, "optimizer": opt.state_dict(), "skipped_nonfinite": nonfinite.skipped,
                       "seconds": seconds_before + time.perf_counter() - t0}
        meta = {"type": "tiny-decoder-run", "train": to_dict(config)}
        save_checkpoint(checkpoint_dir(run_dir, done), {"tiny": tiny.state_dict()}, meta, train_state)
        prune_checkpoints(run_dir, config.keep_checkpoints)

    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="tiny decoder", disable=not progress)
    for step in bar:
        tiny.train()
        gen = step_generator(config.seed, step)
        x = train_images[torch.randint(len(train_images), (config.batch_size,), generator=gen)]  # (B, C, H, W)
        z0, z0_in, target = _teacher_latents(teacher, x, noisy_rows, config.noise_max, gen)
        for group in opt.param_groups:
            group["lr"] = learning_rate(config.lr, step, config.warmup_steps, config.steps, config.lr_schedule)
        out = tiny.decode(z0_in)                                                       # (B, C, H, W)
        mse, l1 = F.mse_loss(out, target), F.l1_loss(out, target)
        encoder_mse = F.mse_loss(tiny.encode(x), z0)
        loss = mse + config.l1_weight * l1 + config.encoder_weight * encoder_mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(tiny.parameters(), config.grad_clip or math.inf)
        done = step + 1
        if nonfinite.finite(loss.item(), grad_norm.item()):
            opt.step()
        elif nonfinite.too_many:
            save_state(done)
            raise nonfinite.error(done, checkpoint_dir(run_dir, done), config.lr)
        if done % config.log_every == 0 or done == end:
            record = {"step": done, "loss": loss.item(), "mse": mse.item(), "l1": l1.item(),
                      "encoder_mse": encoder_mse.item(), "grad_norm": grad_norm.item(),
                      "psnr": 10 * math.log10(4 / max(mse.item(), 1e-12)),
                      "images_per_s": (done - start) * config.batch_size / (time.perf_counter() - t0)}
            log.write(record)
            bar.set_postfix(mse=f"{record['mse']:.2e}", psnr=f"{record['psnr']:.1f}")
        if done % config.checkpoint_every == 0 or done == end:
            save_state(done)
    bar.close()
    if end < config.steps:
        return {}

    metrics = evaluate_tiny(tiny, teacher, eval_images, config.noise_max, config.speed_images,
                            config.speed_seconds)
    metrics.update(steps=config.steps, train_minutes=(seconds_before + time.perf_counter() - t0) / 60,
                   dataset=dataset)
    teacher_record = {"model": config.model, "fingerprint": decoder_fingerprint(teacher),
                      "scaling_factor": teacher.config.scaling_factor, "downsampling_factor": f}
    save_checkpoint(run_dir / "model", {KIND: tiny.state_dict()},
                    {"kind": KIND, KIND: to_dict(tiny.config), "teacher": teacher_record, "metrics": metrics,
                     "train": to_dict(config)})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_losses(log.read(), ["mse", "encoder_mse", "psnr"], run_dir / "loss.png", title=run_dir.name)
    return metrics
