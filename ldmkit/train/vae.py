"""Training a class-conditional VAE (ldmkit.family.vae_networks) on Fashion-MNIST or shapes (the
data and the held-out shapes combinations as the GAN's, ldmkit.train.gan): each step draws
a batch of images and labels, encodes them to q(z | x, y), decodes one reparameterised z per image
and takes an Adam step on the weighted negative ELBO, nll + kl_weight * KL, per image. All
randomness of a step comes from a generator seeded by (seed, step), so a resumed run repeats an
uninterrupted one exactly.

A run folder holds log.jsonl, loss.png, samples/step_*.png (rows as the GAN's, z ~ N(m_y, I) from
the same seeds in every row and grid), checkpoints/ (each loadable as a VAE too) and, when finished,
model/ (ldmkit.family.VAEGenerator reads it): the decoder, its BatchNorm statistics recomputed for
samples of the prior, which is what generation feeds it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import to_dict
from ..family.attributes import dataset_names, trained_labels
from ..family.vae import VAEGenerator
from ..family.vae_networks import VAE
from ..storage import save_checkpoint
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_module
from .gan import grid_classes, save_sample_grid, training_images
from .logging import JsonlLog, plot_losses
from .steps import NonFiniteSteps, fused_adam, step_generator
from .vae_config import VAETrainConfig

TIMING = ("seconds_per_step",)  # what differs between a resumed run and an uninterrupted one


def train_vae(config: VAETrainConfig, run_dir: str | Path, device: str | torch.device = "cpu", resume: bool = True,
              progress: bool = True, max_steps: int | None = None) -> dict:
    """Train, or resume, a VAE in `run_dir`; returns the run's summary."""
    run_dir, device = Path(run_dir), torch.device(device)
    images, labels = training_images(config)
    class_names, attribute_names = dataset_names(config.dataset)
    conditional = config.vae.conditioning == "class"
    trained = trained_labels(to_dict(config))  # the standing statistics' classes

    torch.manual_seed(config.seed)
    vae = VAE(config.vae).to(device)
    opt = fused_adam(vae.parameters(), lr=config.lr)
    meta = {"kind": "vae", "vae": to_dict(config.vae), "class_names": class_names, "dataset": config.dataset,
            "train": to_dict(config)} | ({"attribute_names": attribute_names} if attribute_names else {})
    log = JsonlLog(run_dir / "log.jsonl")
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps)
    start, seconds_before = resume_module(run_dir, config, resume, vae, "vae", opt, nonfinite, log)

    def save_state(done: int) -> None:
        train_state = {"step": done, "optimizer": opt.state_dict(), "skipped_nonfinite": nonfinite.skipped,
                       "seconds": seconds_before + time.perf_counter() - t0}
        save_checkpoint(checkpoint_dir(run_dir, done), {"vae": vae.state_dict()}, {**meta, "step": done}, train_state)
        prune_checkpoints(run_dir, config.keep_checkpoints)

    def sampler() -> VAEGenerator:
        """The decoder as it samples: a copy, statistics of the prior's samples (those of training
        are of the posterior's)."""
        decoder = VAE(config.vae).to(device).decoder
        decoder.load_state_dict(vae.decoder.state_dict())
        means = vae.prior_means.detach().clone()
        decoder.refresh_batch_statistics(trained, z_means=means)
        return VAEGenerator(decoder, class_names, name=run_dir.name, prior_means=means,
                            attribute_names=attribute_names)

    end = config.steps if max_steps is None else min(config.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="vae", disable=not progress)
    t0, sampling = time.perf_counter(), 0.0
    for step in bar:
        vae.train()
        gen = step_generator(config.seed, step)
        index = torch.randint(len(images), (config.batch_size,), generator=gen)
        x = images[index].to(device)
        y = labels[index].to(device) if conditional else None
        losses = vae.losses(x, y, gen)
        loss = losses["nll"] + config.kl_weight * losses["kl"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        done = step + 1
        if nonfinite.finite(loss.item()):
            opt.step()
        elif nonfinite.too_many:
            save_state(done)
            raise nonfinite.error(done, checkpoint_dir(run_dir, done), config.lr)

        if done % config.sample_every == 0 or done == end:
            began = time.perf_counter()
            save_sample_grid(sampler(), grid_classes(config), config.samples_per_class,
                             run_dir / "samples" / f"step_{done:06d}.png", done)
            sampling += time.perf_counter() - began
        if done % config.log_every == 0 or done == end:
            pixels = x[0].numel()
            log.write({"step": done, "loss": loss.item(), "nll": losses["nll"].item(), "kl": losses["kl"].item(),
                       "mse": losses["mse"].item(), "sigma": losses["sigma"].item(),
                       # the negative ELBO in bits per pixel of [-1, 1] images, the likelihood papers' unit
                       "elbo_bits_per_pixel": (losses["nll"] + losses["kl"]).item() / (pixels * 0.6931471805599453),
                       "skipped_nonfinite": nonfinite.skipped,
                       "seconds_per_step": (time.perf_counter() - t0 - sampling) / (done - start)})
            bar.set_postfix(nll=f"{losses['nll'].item():.0f}", kl=f"{losses['kl'].item():.1f}")
        if done % config.checkpoint_every == 0 or done == end:
            save_state(done)
    bar.close()
    records = log.read()
    plot_losses(records, ["nll", "kl", "loss"], run_dir / "loss.png", title=run_dir.name)
    timed = [r["seconds_per_step"] for r in records if "seconds_per_step" in r]
    summary = {"steps": end, "train_minutes": (seconds_before + time.perf_counter() - t0) / 60,
               "seconds_per_step": timed[-1] if timed else None,
               **{k: records[-1][k] for k in ("nll", "kl", "mse", "sigma") if records and k in records[-1]}}
    if end == config.steps:  # the finished VAE: the decoder as the last grid sampled it
        model = sampler()
        weights = {"decoder": model.decoder.state_dict(), "prior": {"means": model.prior_means}}
        save_checkpoint(run_dir / "model", weights, {**meta, "training": summary})
        summary["saved"] = str(run_dir / "model")
    return summary

