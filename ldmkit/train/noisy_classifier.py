"""Training a classifier of noisy latents, p_phi(y | x_t, t), for classifier guidance (Dhariwal &
Nichol 2021, sec. 4): the data are encoded once by the frozen autoencoder of the diffusion models
it will guide (z0 = s * E(x)); each step draws a batch, a timestep t ~ U{0..T-1} and noise for each
latent, noises them with q(x_t | x_0) under the models' own schedule, and takes an AdamW step on
the cross-entropy of the labels. All randomness of a step comes from a generator seeded by
(seed, step), so a resumed run repeats an uninterrupted one exactly.

Every `eval_every` steps the run measures the accuracy on held-out test latents noised to each
of `eval_timesteps` (the same noise each time): near 1 at small t, falling to chance (0.1) as
x_t becomes noise. A run folder holds log.jsonl, loss.png, accuracy_vs_t.png, checkpoints/ (each
a classifier folder too) and, when finished, model/ (ldmkit.model.classifier reads it).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import to_dict
from ..data import fashion_mnist, load_fashion_mnist
from ..diffusion import make_schedule, q_sample
from ..model import load_autoencoder, resolve_repo_path
from ..model.classifier import save_latent_classifier
from ..nets.noisy_classifier import NoisyClassifier
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_module
from .logging import JsonlLog, plot_losses
from .noisy_classifier_config import NoisyClassifierTrainConfig
from .steps import NonFiniteSteps, fused_adam, learning_rate, step_generator

TIMING = ("seconds_per_step",)  # what differs between a resumed run and an uninterrupted one


@torch.no_grad()
def encode(autoencoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Latents z0 = s * E(x) (posterior means) of every image: (N, c, H/f, W/f)."""
    like = next(autoencoder.parameters())
    return torch.cat([autoencoder.to_latent(chunk.to(like.device, like.dtype)).float()
                      for chunk in images.split(batch_size)])


@torch.no_grad()
def accuracy_against_t(net: NoisyClassifier, latents: torch.Tensor, labels: torch.Tensor, alpha_bar: torch.Tensor,
                       timesteps, seed: int = 0, batch_size: int = 500) -> dict[int, float]:
    """{t: the share of latents noised to t (one fixed noise draw) that the classifier gets right}."""
    was_training = net.training
    net.eval()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(latents.device)
    accuracy = {}
    for t in timesteps:
        x_t = q_sample(latents, alpha_bar[t], noise)                                # (N, c, h, w)
        predicted = torch.cat([net(chunk, float(t)).argmax(1) for chunk in x_t.split(batch_size)])
        accuracy[int(t)] = (predicted.cpu() == labels.cpu()).float().mean().item()
    net.train(was_training)
    return accuracy


def train_noisy_classifier(config: NoisyClassifierTrainConfig, run_dir: str | Path, device: str | torch.device = "cpu",
                           resume: bool = True, progress: bool = True, max_steps: int | None = None) -> dict:
    """Train, or resume, a noisy latent classifier in `run_dir`; returns the run's summary."""
    run_dir, device = Path(run_dir), torch.device(device)
    autoencoder = load_autoencoder(resolve_repo_path(config.autoencoder), device)
    images, labels = load_fashion_mnist("train", limit=config.limit)
    test_images, test_labels = load_fashion_mnist("test", limit=None if config.limit is None else config.eval_images)
    if autoencoder.config.in_channels != images.shape[1]:
        raise ValueError(f"the autoencoder {config.autoencoder} takes {autoencoder.config.in_channels}-channel "
                         f"images; the {config.dataset} images have {images.shape[1]}")
    latents = encode(autoencoder, images)                                          # (N, c, h, w)
    test_latents = encode(autoencoder, test_images)
    if latents.shape[1] != config.classifier.encoder.in_channels:
        raise ValueError(f"the autoencoder's latents have {latents.shape[1]} channels: set "
                         f"classifier.encoder.in_channels={latents.shape[1]}")
    alpha_bar = make_schedule(config.schedule).alpha_bar.float().to(device)       # (T,)
    class_names = list(fashion_mnist.CLASS_NAMES)

    torch.manual_seed(config.seed)
    net = NoisyClassifier(config.classifier).to(device)
    opt = fused_adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    log = JsonlLog(run_dir / "log.jsonl")
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps)
    start, seconds_before = resume_module(run_dir, config, resume, net, "classifier", opt, nonfinite, log)

    def save_state(done: int) -> None:
        state = {"step": done, "optimizer": opt.state_dict(), "seconds": seconds_before + time.perf_counter() - t0,
                 "skipped_nonfinite": nonfinite.skipped}
        save_latent_classifier(checkpoint_dir(run_dir, done), net, class_names, config.schedule, autoencoder,
                               config.image_size, {"train": to_dict(config), "step": done}, state)
        prune_checkpoints(run_dir, config.keep_checkpoints)

    end = config.steps if max_steps is None else min(config.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="noisy classifier", disable=not progress)
    t0, measuring, accuracy = time.perf_counter(), 0.0, {}
    for step in bar:
        net.train()
        gen = step_generator(config.seed, step)
        index = torch.randint(len(latents), (config.batch_size,), generator=gen)
        t = torch.randint(len(alpha_bar), (config.batch_size,), generator=gen)     # (B,) every t alike
        noise = torch.randn((config.batch_size, *latents.shape[1:]), generator=gen).to(device)
        x_t = q_sample(latents[index], alpha_bar[t.to(device)].view(-1, 1, 1, 1), noise)
        for group in opt.param_groups:
            group["lr"] = learning_rate(config.lr, step, config.warmup_steps, config.steps, config.lr_schedule)
        loss = F.cross_entropy(net(x_t, t.to(device).float()), labels[index].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip or math.inf)
        done = step + 1
        if nonfinite.finite(loss.item(), grad_norm.item()):
            opt.step()
        elif nonfinite.too_many:
            save_state(done)  # the weights are still those from before the streak began
            raise nonfinite.error(done, checkpoint_dir(run_dir, done), config.lr)

        measure = done % config.eval_every == 0 or done == end
        if measure:
            began = time.perf_counter()
            count = len(test_latents) if done == config.steps else config.eval_images
            accuracy = accuracy_against_t(net, test_latents[:count], test_labels[:count], alpha_bar,
                                          config.eval_timesteps, config.seed)
            measuring += time.perf_counter() - began
        if done % config.log_every == 0 or measure:
            record = {"step": done, "loss": loss.item(), "grad_norm": grad_norm.item(),
                      "lr": opt.param_groups[0]["lr"], "skipped_nonfinite": nonfinite.skipped,
                      "seconds_per_step": (time.perf_counter() - t0 - measuring) / (done - start)}
            if measure:
                record |= {f"accuracy_t{t}": value for t, value in accuracy.items()}
            log.write(record)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if done % config.checkpoint_every == 0 or done == end:
            save_state(done)
    bar.close()
    records = log.read()
    plot_losses(records, ["loss", "grad_norm"], run_dir / "loss.png", title=run_dir.name)
    plot_accuracy(records, run_dir / "accuracy_vs_t.png", title=run_dir.name)
    summary = {"steps": end, "train_minutes": (seconds_before + time.perf_counter() - t0) / 60,
               "accuracy_by_t": accuracy, "test_images": len(test_latents) if end == config.steps else None}
    if end == config.steps:  # the finished classifier
        save_latent_classifier(run_dir / "model", net, class_names, config.schedule, autoencoder, config.image_size,
                               {"train": to_dict(config), "dataset": config.dataset, "training": summary})
        summary["saved"] = str(run_dir / "model")
    return summary


def plot_accuracy(records: list[dict], out: Path, title: str = "") -> Path:
    """Test accuracy against the timestep t, one line per measurement (later ones darker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in records if any(k.startswith("accuracy_t") for k in r)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, record in enumerate(measured):
        points = sorted((int(key[len("accuracy_t"):]), value) for key, value in record.items()
                        if key.startswith("accuracy_t"))
        shade = 0.25 + 0.75 * (k + 1) / len(measured)
        ax.plot(*zip(*points), marker=".", color=(0.1, 0.3, 0.8, shade), label=f"step {record['step']}")
    ax.axhline(0.1, color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("test accuracy on x_t")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if measured:
        ax.legend(loc="upper right", fontsize=7, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
