"""Training the first stage: reconstruction + regulariser (KL or codebook) + perceptual + GAN.

One readable loop. Each step: the generator (autoencoder) step, then, once the GAN is on, the
discriminator step on the detached reconstruction. All randomness of a step (the batch, the KL
sample) comes from generators seeded by (seed, step), so a run resumed from a checkpoint takes
exactly the steps an uninterrupted run would. Under torchrun every process draws the global
batch and keeps its rows; DDP averages the gradients, the adaptive GAN weight compares the
global batch's gradients and a VQ codebook learns from all processes' vectors (vq.py), so N
processes take the steps of one.

A run folder holds log.jsonl, loss.png, samples/ (originals above reconstructions),
checkpoints/ (the last few, for --resume) and, at the end, model/ (the trained autoencoder,
its latent scale factor measured) and metrics.json.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..autoencoders import (
    GAN_LOSSES,
    Autoencoder,
    PatchDiscriminator,
    adaptive_gan_weight,
    perceptual_loss,
    reconstruction_loss,
)
from ..config import to_dict
from ..data import ImageFolder, load_fashion_mnist, photo_crops
from ..data.shapes import DEFAULT_HOLDOUT, ShapesDataset
from ..metrics import gradient_energy_ratio, psnr, ssim
from ..model import load_autoencoder, save_autoencoder
from ..storage import save_checkpoint
from ..utils.images import image_grid, save_png, to_pil
from . import distributed
from .autoencoder_config import AutoencoderTrainConfig, DataConfig
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_point
from .logging import JsonlLog, plot_losses
from .steps import NonFiniteSteps, fused_adam, learning_rate, mixed_precision, step_generator


def load_images(data: DataConfig, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) image tensors in [-1, 1], (N, C, size, size)."""
    if data.dataset == "fashion-mnist":
        if channels != 1:
            raise ValueError(f"Fashion-MNIST is grayscale: set model.in_channels=1 (got {channels})")
        train, _ = load_fashion_mnist("train", pad_to=data.size, limit=data.limit)
        test, _ = load_fashion_mnist("test", pad_to=data.size, limit=data.eval_images)
        return train, test
    if data.dataset == "photos":
        if channels != 3:
            raise ValueError(f"the photos are RGB: set model.in_channels=3 (got {channels})")
        n = data.limit or 4096
        crops = photo_crops(size=data.size, count=n + data.eval_images, seed=0)
        return crops[:n], crops[n:]
    if data.dataset == "shapes":
        if channels != 3:
            raise ValueError(f"the shapes are RGB: set model.in_channels=3 (got {channels})")
        train = ShapesDataset(data.limit or 8192, size=data.size, seed=0, holdout=DEFAULT_HOLDOUT)
        test = ShapesDataset(data.eval_images, size=data.size, seed=1)  # other draws, all combinations
        return train.images(), test.images()
    folder = ImageFolder(Path(data.path), size=data.size, channels=channels)
    print(folder.summary())
    images = torch.stack([folder[i][0] for i in range(len(folder))])
    held = min(data.eval_images, max(1, len(images) // 10))
    return images[held:][: data.limit], images[:held]


def _batch(images: torch.Tensor, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The step's batch: a fixed permutation per epoch, derived from (seed, epoch)."""
    n = len(images)
    start = step * batch_size
    index = []
    while len(index) < batch_size:
        epoch, offset = divmod(start + len(index), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        index.extend(perm[offset : offset + batch_size - len(index)].tolist())
    return images[index]


@torch.no_grad()
def evaluate(model: Autoencoder, images: torch.Tensor, batch_size: int = 200) -> dict[str, float]:
    """PSNR / SSIM / gradient-energy ratio (blur) of deterministic reconstructions (posterior
    mean; quantised codes), and for vq the share of the codebook the held-out images use."""
    model.eval()
    psnrs, ssims, sharpness, codes = [], [], [], []
    for chunk in images.split(batch_size):
        out = model(chunk, sample_posterior=False)
        rec = out.reconstruction.clamp(-1, 1)
        psnrs.append(psnr(rec, chunk))
        sharpness.append(gradient_energy_ratio(rec, chunk))
        ssims.append(ssim(rec, chunk) if min(chunk.shape[-2:]) >= 11 else torch.full((len(chunk),), float("nan")))
        if out.vq is not None:
            codes.append(out.vq.codes.flatten())
    metrics = {
        "psnr": torch.cat(psnrs).mean().item(),
        "ssim": torch.cat(ssims).mean().item(),
        "gradient_energy_ratio": torch.cat(sharpness).mean().item(),
    }
    if codes:
        used = torch.cat(codes).unique().numel()
        metrics["codebook_usage"] = used / model.config.codebook_size
    return metrics


@torch.no_grad()
def latent_scale_factor(model: Autoencoder, images: torch.Tensor, batch_size: int = 200) -> float:
    """1 / std of the unscaled latents over a data sample (LDM sec. 4.3.2), so that stage 2
    sees latents of unit variance."""
    model.eval()
    latents = torch.cat([model.to_latent(chunk) / model.config.scaling_factor for chunk in images.split(batch_size)])
    return 1.0 / latents.float().std().item()


def _save_reconstructions(model: Autoencoder, images: torch.Tensor, path: Path, step: int) -> None:
    model.eval()
    with torch.no_grad():
        rec = model(images, sample_posterior=False).reconstruction.clamp(-1, 1)
    zoom = max(1, 96 // images.shape[-1])  # small images are enlarged (nearest) to be seen
    tiles = [
        to_pil(x).resize((zoom * x.shape[-1], zoom * x.shape[-2]), Image.NEAREST) for x in torch.cat([images, rec])
    ]
    grid = image_grid(tiles, columns=len(images), row_labels=["input", "recon"])
    save_png(grid, path, {"ldmkit": "autoencoder-reconstructions", "step": step})


def train_autoencoder(
    config: AutoencoderTrainConfig,
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool = True,
    progress: bool = True,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Train, or resume, a first-stage model in `run_dir` (under torchrun: data-parallel); returns
    the held-out metrics. max_steps stops early (for tests of resume); the run is then
    unfinished but resumable."""
    return distributed.run(
        lambda rank, device: _train_autoencoder(config, Path(run_dir), rank, device, resume, progress, max_steps),
        device, config.batch_size,
    )


def _train_autoencoder(config, run_dir: Path, rank: distributed.Rank, device: torch.device, resume: bool,
                       progress: bool, max_steps: int | None) -> dict[str, float]:
    train_images, eval_images = load_images(config.data, config.model.in_channels)
    if len(train_images) < 1:
        raise ValueError("no training images")
    size = train_images.shape[-1]
    f = config.model.downsampling_factor
    if size % f:
        raise ValueError(f"image size {size} is not divisible by the downsampling factor f = {f}")

    torch.manual_seed(config.seed)  # the initial weights, and the global RNG's starting state
    model = Autoencoder(config.model).to(device)
    loss_cfg = config.loss
    disc = None
    if loss_cfg.gan_weight > 0:
        disc = PatchDiscriminator(config.model.out_channels, loss_cfg.disc_channels, loss_cfg.disc_layers,
                                  loss_cfg.disc_norm)
        disc = distributed.synchronised_batch_norm(disc, rank, device).to(device)
        d_loss_fn, g_loss_fn = GAN_LOSSES[loss_cfg.gan_loss]
        if rank.world > 1 and device.type == "cpu" and loss_cfg.disc_norm == "batch" and rank.is_main:
            print("note: on CPU each process's discriminator BatchNorm sees its own share of the batch; "
                  "set loss.disc_norm=group for results equal to one process")
    perceptual_name = loss_cfg.perceptual
    if perceptual_name == "auto":  # the measured default: feature matching whenever D exists
        perceptual_name = "disc_features" if disc is not None else "none"
    perceptual = perceptual_loss(perceptual_name, disc, loss_cfg.lpips_vgg, loss_cfg.lpips_heads).to(device)
    if config.init_from:
        start_from = load_autoencoder(config.init_from, device)
        if replace(start_from.config, scaling_factor=config.model.scaling_factor) != config.model:
            raise ValueError(f"init_from {config.init_from} has another model config than this run's; "
                             "set the same model.* values")
        model.load_state_dict(start_from.state_dict())
    if config.train_decoder_only:
        model.encoder.requires_grad_(False)
        model.quant_conv.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = fused_adam(trainable, lr=config.lr, betas=config.adam_betas)
    disc_opt = fused_adam(disc.parameters(), lr=config.disc_lr, betas=config.adam_betas) if disc else None
    net = distributed.data_parallel(model, rank, device)
    disc_net = distributed.data_parallel(disc, rank, device) if disc is not None else None

    log = JsonlLog(run_dir / "log.jsonl") if rank.is_main else None
    start, seconds_before = 0, 0.0
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps)
    point = resume_point(run_dir, config) if resume else None
    if point is not None:
        found, states, train_state = point
        model.load_state_dict(states["autoencoder"])
        opt.load_state_dict(train_state["optimizer"])
        if disc is not None:
            disc.load_state_dict(states["discriminator"])
            disc_opt.load_state_dict(train_state["disc_optimizer"])
        start, seconds_before = train_state["step"], train_state["seconds"]
        nonfinite.skipped = train_state.get("skipped_nonfinite", 0)
        torch.set_rng_state(train_state["torch_rng"])
        if rank.is_main:
            log.truncate_after(start)
            print(f"resuming from {found} (step {start})")
    elif resume is False and rank.is_main and (run_dir / "log.jsonl").exists():
        (run_dir / "log.jsonl").unlink()

    preview = eval_images[:8].to(device)
    end = config.steps if max_steps is None else min(config.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="autoencoder",
               disable=not (progress and rank.is_main))
    mine = rank.rows(config.batch_size)  # every process draws the global batch, then keeps its rows
    latent_shape = (config.batch_size, config.model.z_channels, size // f, size // f)
    autocast = mixed_precision(config.mixed_precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=config.mixed_precision == "fp16")
    gradient_mean = (lambda g: distributed.mean_over_processes(g, rank)) if rank.world > 1 else None
    t0 = time.perf_counter()

    def save_state(done: int) -> None:
        states = {"autoencoder": model.state_dict()}
        # the global RNG too: VQ dead-code restarts draw from it
        train_state = {"step": done, "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                       "seconds": seconds_before + time.perf_counter() - t0, "skipped_nonfinite": nonfinite.skipped}
        if disc is not None:
            states["discriminator"] = disc.state_dict()
            train_state["disc_optimizer"] = disc_opt.state_dict()
        meta = {"type": "autoencoder-run", "train": to_dict(config)}
        save_checkpoint(checkpoint_dir(run_dir, done), states, meta, train_state)
        prune_checkpoints(run_dir, config.keep_checkpoints)

    for step in bar:
        model.train()
        gen = step_generator(config.seed, step)
        x = _batch(train_images, config.batch_size, config.seed, step)[mine].to(device)
        # the posterior noise of the global batch, so that a process's rows get what they would alone
        eps = torch.randn(latent_shape, generator=gen)[mine].to(device) if config.model.kind == "kl" else None
        for group in opt.param_groups:
            group["lr"] = learning_rate(config.lr, step, config.warmup_steps, config.steps, config.lr_schedule)
        gan_on = disc is not None and step >= loss_cfg.disc_start

        # generator step: reconstruction + regulariser + perceptual (+ adversarial); D is only
        # looked through here (its gradients would be thrown away), so it is frozen meanwhile
        if disc is not None:
            disc.requires_grad_(False)
        with autocast:
            out = net(x, eps=eps)
            rec_loss = reconstruction_loss(x, out.reconstruction, loss_cfg.l1, loss_cfg.l2)
            nll = rec_loss + loss_cfg.perceptual_weight * perceptual(x, out.reconstruction).mean()
            if out.kl is not None:  # KL / pixels: as LDM's weight on a summed-over-pixels loss
                reg = loss_cfg.kl_weight * out.kl.mean() / x[0].numel()
            elif out.vq is not None:
                reg = loss_cfg.codebook_weight * out.vq.loss
            else:
                reg = nll.new_zeros(())
            loss = nll + reg
            record = {"rec": rec_loss, "reg": reg}
            if gan_on:
                g_loss = g_loss_fn(disc(out.reconstruction))
                weight = (adaptive_gan_weight(nll, g_loss, model.last_layer, average=gradient_mean)
                          if loss_cfg.adaptive_weight else nll.new_ones(()))
                loss = loss + loss_cfg.gan_weight * weight * g_loss
                record.update(g_loss=g_loss, gan_weight=weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip or math.inf)
        record.update(loss=loss, grad_norm=grad_norm)

        # discriminator step on the detached reconstruction
        if gan_on:
            disc.requires_grad_(True)
            for group in disc_opt.param_groups:
                group["lr"] = learning_rate(
                    config.disc_lr, step - loss_cfg.disc_start, config.warmup_steps, config.steps, config.lr_schedule
                )
            with autocast:
                d_loss = d_loss_fn(disc_net(x), disc_net(out.reconstruction.detach()))
            disc_opt.zero_grad(set_to_none=True)
            scaler.scale(d_loss).backward()
            record["d_loss"] = d_loss
        if out.vq is not None:  # already the global batch's statistics
            record.update(perplexity=out.vq.perplexity, batch_usage=out.vq.usage)
        record = {"step": step + 1, **distributed.mean_of_each(record, rank)}  # one sync a step
        done = step + 1
        if nonfinite.finite(record["loss"], record["grad_norm"], record.get("d_loss", 0.0)):
            scaler.step(opt)
            if gan_on:
                scaler.step(disc_opt)
        elif nonfinite.too_many:
            if rank.is_main:  # the weights are still those from before the streak began
                save_state(done)
            raise nonfinite.error(done, checkpoint_dir(run_dir, done), config.lr)
        scaler.update()
        if not rank.is_main:
            continue  # rank 0 alone logs, samples and writes checkpoints
        if done % config.log_every == 0 or done == end:
            record["images_per_s"] = (done - start) * config.batch_size / (time.perf_counter() - t0)
            record["skipped_nonfinite"] = nonfinite.skipped
            log.write(record)
            bar.set_postfix(rec=f"{record['rec']:.4f}", reg=f"{record['reg']:.2e}")
        if done % config.image_every == 0:
            _save_reconstructions(model, preview, run_dir / "samples" / f"step-{done:08d}.png", done)
        if done % config.checkpoint_every == 0 or done == end:
            save_state(done)
    bar.close()
    if not rank.is_main or end < config.steps:
        return {} if rank.is_main else {"rank": rank.rank}

    # the finished model: measured scale factor, held-out metrics, plots
    train_minutes = (seconds_before + time.perf_counter() - t0) / 60
    scale = latent_scale_factor(model, train_images[: config.scale_images].to(device))
    model.config = replace(model.config, scaling_factor=scale)
    metrics = evaluate(model, eval_images.to(device))
    records = log.read()
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    metrics.update(
        scaling_factor=scale,
        steps=config.steps,
        images_per_s=speeds[-1] if speeds else None,
        train_minutes=train_minutes,
    )
    save_autoencoder(model, run_dir / "model", extra={"metrics": metrics, "train": to_dict(config)})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_losses(records, ["rec", "reg", "g_loss", "d_loss", "perplexity"], run_dir / "loss.png",
                title=str(run_dir.name))
    _save_reconstructions(model, preview, run_dir / "reconstructions.png", config.steps)
    return metrics
