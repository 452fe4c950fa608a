"""The loop all four fine-tuning methods share.

The teaching images are encoded once (z0 = s E(x)); each step draws a batch, encodes its
captions through the method (textual inversion's new vectors need gradients through the text
encoder; the others use the frozen encoder's states), and takes an AdamW step on LDM eq. 2
over the method's parameters only. DreamBooth adds its prior-preservation term: the same loss
on latents the model generated itself for the class prompts before training, weighted by
`prior_weight` (Ruiz et al. 2023, eq. 2); the other methods can take the same term (kohya's
"regularization images"), which keeps what the old prompts draw. Randomness comes from (seed, step), and the
trainable weights and optimizer are checkpointed, so a killed run resumes exactly.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import to_dict
from ..data import ImageFolder
from ..diffusion import diffusion_loss
from ..storage import save_checkpoint
from ..train.checkpoints import checkpoint_dir, prune_checkpoints, resume_point
from ..train.finetune_config import FinetuneConfig
from ..train.finetune_methods import prepare_method
from ..train.logging import JsonlLog, plot_losses
from ..train.steps import fused_adam, step_generator
from ..utils.images import image_grid, save_png


def read_teaching_images(pipe, folder: str | Path) -> tuple[torch.Tensor, list[str]]:
    """(images (N, C, H, W) in [-1, 1] at the model's size, captions) of a captioned folder."""
    found = ImageFolder(Path(folder), size=pipe.config.image_size, channels=pipe.autoencoder.config.in_channels)
    print(found.summary())  # an empty or unreadable folder is refused by ImageFolder itself
    items = [found[i] for i in range(len(found))]
    return torch.stack([x for x, _ in items]), [caption for _, caption in items]


@torch.no_grad()
def class_latents(pipe, prompts: tuple[str, ...], count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """DreamBooth's prior: `count` latents the model itself generates for the class prompts."""
    per_prompt = max(1, -(-count // len(prompts)))
    latents = pipe.generate(list(prompts), num_images=per_prompt, seed=seed + 1_000_000, output="latent",
                            batch_size=16, progress=True)
    return latents, [p for p in prompts for _ in range(per_prompt)]


def finetune(pipe, config: FinetuneConfig, run_dir: str | Path, resume: bool = True, progress: bool = True,
             max_steps: int | None = None) -> dict:
    """Fine-tune `pipe` in place by `config.method`; writes the shareable file (or model folder)
    into run_dir and returns a summary with its path."""
    if pipe.config.conditioning != "text":
        raise ValueError(f"fine-tuning teaches prompts: {pipe.name} is {pipe.config.conditioning}-conditioned, "
                         "it needs a text-conditioned model")
    run_dir = Path(run_dir)
    device = pipe.device
    images, captions = read_teaching_images(pipe, config.data)
    with torch.no_grad():
        latents = torch.cat([pipe.autoencoder.to_latent(chunk.to(device, pipe.dtype)).float()
                             for chunk in images.split(64)])
    prior = None
    if config.class_prompts and config.prior_weight > 0:  # DreamBooth's prior; kohya's regularization images
        prior = class_latents(pipe, config.class_prompts, config.class_images, config.seed)
        save_png(image_grid(pipe.finish(prior[0][:32], "pil"), columns=8), run_dir / "class_images.png",
                 {"prompts": list(config.class_prompts)})
    method = prepare_method(pipe, config, captions + (prior[1] if prior else []))
    params = [p for p in method.module.parameters() if p.requires_grad]
    opt = fused_adam(params, lr=config.learning_rate)

    log = JsonlLog(run_dir / "log.jsonl")
    start, meta = 0, {"type": "finetune-run", "train": to_dict(config), "model": pipe.name}
    point = resume_point(run_dir, config) if resume else None
    if point is not None:
        found, stored, train_state = point
        method.module.load_state_dict(stored["trainable"])
        opt.load_state_dict(train_state["optimizer"])
        start = train_state["step"]
        log.truncate_after(start)
        print(f"resuming from {found} (step {start})")
    elif (run_dir / "log.jsonl").exists():
        (run_dir / "log.jsonl").unlink()

    end = config.steps if max_steps is None else min(config.steps, max_steps)
    pipe.net.train()
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc=config.method, disable=not progress)
    t0 = time.perf_counter()
    for step in bar:
        gen = step_generator(config.seed, step)
        index = torch.randint(len(latents), (config.batch_size,), generator=gen)
        loss = _loss(pipe, method, latents[index], [captions[i] for i in index], gen)
        if prior is not None:
            prior_latents, prior_captions = prior
            chosen = torch.randint(len(prior_latents), (config.batch_size,), generator=gen)
            prior_loss = _loss(pipe, method, prior_latents[chosen], [prior_captions[i] for i in chosen], gen)
            loss = loss + config.prior_weight * prior_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {done}: lower the learning rate "
                                     f"({config.learning_rate})")
        log.write({"step": done, "loss": loss.item()})
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if done % config.checkpoint_every == 0 or done == end:
            train_state = {"step": done, "optimizer": opt.state_dict()}
            save_checkpoint(checkpoint_dir(run_dir, done), {"trainable": method.module.state_dict()}, meta, train_state)
            prune_checkpoints(run_dir, config.keep_checkpoints)
    bar.close()
    pipe.net.eval()
    plot_losses(log.read(), ["loss"], run_dir / "loss.png", title=f"{config.method}: {run_dir.name}")
    summary = {"steps": end, "train_seconds": time.perf_counter() - t0, "images": len(images)}
    if end == config.steps:
        summary["saved"] = str(method.save(run_dir))
        _sample_grid(pipe, list(dict.fromkeys(captions))[:6], run_dir / "samples.png", config)
    return summary


def _loss(pipe, method, z0: torch.Tensor, captions: list[str], gen: torch.Generator) -> torch.Tensor:
    cond = method.conditioning(captions)
    return diffusion_loss(lambda x_t, t: pipe.net(x_t, t, **cond), z0, pipe.schedule, pipe.config.prediction, gen=gen)


@torch.no_grad()
def _sample_grid(pipe, prompts: list[str], path: Path, config: FinetuneConfig) -> None:
    images = pipe.generate(prompts, num_images=8, seed=0)
    grid = image_grid([im.resize((64, 64), 0) for im in images], columns=8, row_labels=prompts)
    save_png(grid, path, {"method": config.method, "prompts": prompts})
