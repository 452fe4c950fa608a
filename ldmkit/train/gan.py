"""Training a class-conditional GAN (ldmkit.family.gan_networks) on Fashion-MNIST or shapes with
the hinge loss. A shapes class is one of the 48 (colour, shape, quadrant) combinations, embedded as
the sum of its three attributes' embeddings; `shapes_holdout`'s combinations are never trained on.

Each step draws a batch of real images and their labels, and a z per image; the generator makes
fakes of those same labels. The discriminator takes an Adam step on the hinge loss (Lim & Ye
2017; VQGAN's) of real against the detached fakes, plus R1 on the reals if r1_gamma > 0; then
the generator takes one on -D(fake) through the updated discriminator (DCGAN's alternation). An
EMA of the generator's weights, its BatchNorm statistics recomputed for
them, is what samples and is saved. All randomness of a step comes from
a generator seeded by (seed, step), so a resumed run repeats an uninterrupted one exactly.

A run folder holds log.jsonl, loss.png, samples/step_*.png (a row per class, or for shapes per
combination of shapes.PREVIEW and the held-out ones; the same seeds in every row and grid),
checkpoints/ (each loadable as a GAN too) and, when finished, model/ (ldmkit.family.GANGenerator
reads it).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..autoencoders.losses import hinge_d_loss, hinge_g_loss
from ..config import to_dict
from ..data import load_fashion_mnist, shapes
from ..family.attributes import dataset_names, trained_labels
from ..family.base import ClassPromptGenerator
from ..family.gan import GANGenerator
from ..family.gan_networks import Generator, ProjectionDiscriminator
from ..storage import save_checkpoint
from ..utils.images import image_grid, save_png
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_point
from .ema import EMA
from .gan_config import GANTrainConfig
from .logging import JsonlLog, plot_losses
from .steps import NonFiniteSteps, fused_adam, step_generator
from .vae_config import VAETrainConfig

TIMING = ("seconds_per_step",)  # what differs between a resumed run and an uninterrupted one


def training_images(config: GANTrainConfig | VAETrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, S, S) in [-1, 1], labels (N,)) of a GAN's or a VAE's run: of `classes` if
    given, the first `limit`. A shapes label is its combination's index in shapes.COMBINATIONS;
    `limit` (None: shapes.TRAIN_RENDERS) renders of the combinations neither held out nor outside
    `classes`."""
    network = config.gan if isinstance(config, GANTrainConfig) else config.vae
    if config.dataset == "shapes":
        left_out = tuple(c for k, c in enumerate(shapes.COMBINATIONS) if c in config.shapes_holdout
                         or (config.classes is not None and k not in config.classes))
        images, labels = _shapes_renders(config.limit or shapes.TRAIN_RENDERS, network.image_size, config.seed,
                                         left_out)
    else:
        images, labels = _train_split(network.image_size)
    if config.classes is not None:
        keep = torch.isin(labels, torch.tensor(config.classes))
        images, labels = images[keep], labels[keep]
    if config.limit is not None:
        images, labels = images[: config.limit], labels[: config.limit]
    if images.shape[1] != network.channels:
        raise ValueError(f"the {config.dataset} images have {images.shape[1]} channels: set the network's channels")
    return images, labels


@functools.lru_cache(maxsize=1)
def _train_split(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's training split, decoded once per process (some seconds); only ever indexed."""
    return load_fashion_mnist("train", pad_to=size)


@functools.lru_cache(maxsize=1)
def _shapes_renders(count: int, size: int, seed: int, holdout: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` shapes renders of the allowed combinations and their labels, rendered once per process."""
    data = shapes.ShapesDataset(count, size=size, seed=seed, holdout=holdout)
    items = [data[i] for i in range(count)]
    # (colour, shape, quadrant) indices -> the index in shapes.COMBINATIONS, their product's order
    labels = [(c * len(shapes.SHAPES) + s) * len(shapes.QUADRANTS) + q for _, _, (c, s, q) in items]
    return torch.stack([image for image, _, _ in items]), torch.tensor(labels)


def grid_classes(config: GANTrainConfig | VAETrainConfig) -> list[int]:
    """The labels of a run's sample grid rows: the trained classes, or for shapes a few trained
    combinations (shapes.PREVIEW) and the held-out ones, which show whether the attributes compose."""
    if config.dataset == "shapes":
        return [shapes.COMBINATIONS.index(c) for c in (*shapes.PREVIEW, *config.shapes_holdout)]
    network = config.gan if isinstance(config, GANTrainConfig) else config.vae
    return list(config.classes) if config.classes is not None else list(range(network.num_classes))


def r1_penalty(d_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over real images (Mescheder et al. 2018, eq. 9), D(x) an image's mean
    patch logit; its graph is kept, so the penalty trains D."""
    grad, = torch.autograd.grad(d_real.mean(dim=(1, 2, 3)).sum(), real, create_graph=True)
    return grad.pow(2).sum(dim=(1, 2, 3)).mean()


def train_gan(config: GANTrainConfig, run_dir: str | Path, device: str | torch.device = "cpu", resume: bool = True,
              progress: bool = True, max_steps: int | None = None) -> dict:
    """Train, or resume, a GAN in `run_dir`; returns the run's summary."""
    run_dir, device = Path(run_dir), torch.device(device)
    images, labels = training_images(config)
    class_names, attribute_names = dataset_names(config.dataset)
    conditional = config.gan.conditioning == "class"
    trained = trained_labels(to_dict(config))  # the standing statistics' classes

    torch.manual_seed(config.seed)
    generator = Generator(config.gan).to(device)
    discriminator = ProjectionDiscriminator(config.gan).to(device)
    ema = EMA(generator, config.ema_decay)
    opt_g = fused_adam(generator.parameters(), lr=config.lr, betas=config.betas)
    opt_d = fused_adam(discriminator.parameters(), lr=config.lr, betas=config.betas)
    # samples with the EMA weights: the grids during training and the final model
    sampler = GANGenerator(Generator(config.gan).to(device), class_names, name=run_dir.name,
                           attribute_names=attribute_names)
    meta = {"kind": "gan", "gan": to_dict(config.gan), "class_names": class_names, "dataset": config.dataset,
            "train": to_dict(config)} | ({"attribute_names": attribute_names} if attribute_names else {})
    log = JsonlLog(run_dir / "log.jsonl")
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps)
    start, seconds_before = 0, 0.0
    point = resume_point(run_dir, config) if resume else None
    if point is not None:
        found, stored, train_state = point
        generator.load_state_dict(stored["generator"])
        discriminator.load_state_dict(stored["discriminator"])
        ema.load_state_dict(stored["ema_generator"])
        opt_g.load_state_dict(train_state["optimizer_g"])
        opt_d.load_state_dict(train_state["optimizer_d"])
        start, seconds_before = train_state["step"], train_state["seconds"]
        nonfinite.skipped = train_state.get("skipped_nonfinite", 0)
        log.truncate_after(start)
        print(f"resuming from {found} (step {start})")
    elif log.path.exists():
        log.path.unlink()

    def save_state(done: int) -> None:
        weights = {"generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
                   "ema_generator": ema.state_dict()}
        train_state = {"step": done, "optimizer_g": opt_g.state_dict(), "optimizer_d": opt_d.state_dict(),
                       "seconds": seconds_before + time.perf_counter() - t0, "skipped_nonfinite": nonfinite.skipped}
        save_checkpoint(checkpoint_dir(run_dir, done), weights, {**meta, "step": done}, train_state)
        prune_checkpoints(run_dir, config.keep_checkpoints)

    end = config.steps if max_steps is None else min(config.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="gan", disable=not progress)
    t0, sampling = time.perf_counter(), 0.0
    for step in bar:
        generator.train()
        discriminator.train()
        gen = step_generator(config.seed, step)
        index = torch.randint(len(images), (config.batch_size,), generator=gen)
        real = images[index].to(device)
        y = labels[index].to(device) if conditional else None  # the fakes get the reals' labels
        z = torch.randn((config.batch_size, config.gan.z_dim), generator=gen).to(device)
        fake = generator(z, y)

        # D: real against the detached fakes, each batch through D alone (its BatchNorm)
        discriminator.requires_grad_(True)
        real.requires_grad_(config.r1_gamma > 0)
        d_real, d_fake = discriminator(real, y), discriminator(fake.detach(), y)
        d_loss = hinge_d_loss(d_real, d_fake)
        r1 = r1_penalty(d_real, real) if config.r1_gamma > 0 else None
        opt_d.zero_grad(set_to_none=True)
        (d_loss if r1 is None else d_loss + 0.5 * config.r1_gamma * r1).backward()
        g_loss = torch.tensor(math.nan)
        if math.isfinite(d_loss.item()):
            opt_d.step()
            # G: raise the updated D's verdict on the same fakes; D is not trained by it
            discriminator.requires_grad_(False)
            g_loss = hinge_g_loss(discriminator(fake, y))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
        done = step + 1
        if nonfinite.finite(d_loss.item(), g_loss.item()):
            opt_g.step()
            ema.update(generator, step)
        elif nonfinite.too_many:
            save_state(done)
            raise nonfinite.error(done, checkpoint_dir(run_dir, done), config.lr)

        sample = done % config.sample_every == 0 or done == end
        if sample:
            began = time.perf_counter()
            sampler.net.load_state_dict(ema.state_dict())
            sampler.net.refresh_batch_statistics(trained)  # those of the EMA weights
            save_sample_grid(sampler, grid_classes(config), config.samples_per_class,
                             run_dir / "samples" / f"step_{done:06d}.png", done)
            sampling += time.perf_counter() - began
        if done % config.log_every == 0 or done == end:
            record = {"step": done, "d_loss": d_loss.item(), "g_loss": g_loss.item(),
                      "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item(),
                      "skipped_nonfinite": nonfinite.skipped,
                      "seconds_per_step": (time.perf_counter() - t0 - sampling) / (done - start)}
            if r1 is not None:
                record["r1"] = r1.item()
            log.write(record)
            bar.set_postfix(d=f"{d_loss.item():.3f}", g=f"{g_loss.item():.3f}")
        if done % config.checkpoint_every == 0 or done == end:
            save_state(done)
    bar.close()
    records = log.read()
    plot_losses(records, ["d_loss", "g_loss", "d_real", "d_fake", "r1"], run_dir / "loss.png", title=run_dir.name)
    timed = [r["seconds_per_step"] for r in records if "seconds_per_step" in r]
    summary = {"steps": end, "train_minutes": (seconds_before + time.perf_counter() - t0) / 60,
               "seconds_per_step": timed[-1] if timed else None}
    if end == config.steps:  # the finished GAN: the EMA generator, as in the last grid
        sampler.net.load_state_dict(ema.state_dict())
        sampler.net.refresh_batch_statistics(trained)
        save_checkpoint(run_dir / "model", {"generator": sampler.net.state_dict()}, {**meta, "training": summary})
        summary["saved"] = str(run_dir / "model")
    return summary


@torch.no_grad()
def save_sample_grid(sampler: ClassPromptGenerator, rows: list[int], per_row: int, path: Path,
                     step: int) -> Path:
    """A row of samples per class of `rows` (grid_classes), seeds 0.. in every row: a column shares
    its z. A GAN's or a VAE's."""
    if sampler.conditional:
        names = [sampler.class_names[k] for k in rows]
        images = [im for k in rows for im in sampler.generate(class_labels=[k], num_images=per_row, seed=0)]
    else:
        names, images = ["samples"], sampler.generate(num_images=per_row, seed=0)
    grid = image_grid([im.resize((64, 64), Image.NEAREST) for im in images], columns=per_row, row_labels=names)
    return save_png(grid, path, {"ldmkit": f"{sampler.kind}-samples", "step": step, "classes": names})
