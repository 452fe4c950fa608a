"""Training a ControlNet (Zhang, Rao and Agrawala 2023) on a frozen text-to-image model.

The base model is loaded and frozen; the ControlNet starts as a copy of its encoder
(ControlNet.from_unet: the zero convolutions make the controlled model the base, bit for bit)
and is the only thing trained. The data are encoded once: latents z0 = s * E(x) of the target
images, the hints kept in pixels, the text states of each distinct prompt. Each step draws a
batch, replaces `prompt_dropout` of its prompts by "" (the paper drops 50%, so that the hint
alone must carry the layout) and takes an AdamW step on LDM eq. 2, the base reading the
ControlNet's residuals. All randomness of a step comes from a generator seeded by (seed, step),
so a resumed run repeats an uninterrupted one exactly.

Every `obedience_every` steps the run generates one image from each held hint and logs how well
the images obey them (controlnet_hints.obedience); the paper's "sudden convergence", where the
model starts following the hint within a few hundred steps, shows on training.png (loss and
obedience against the step). A run folder holds log.jsonl, training.png, samples/ (hints,
samples and targets side by side), checkpoints/ and, when finished, controlnet/: an ldmkit
ControlNet folder that Pipeline.load_controlnet reads (so is every checkpoint folder).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import to_dict
from ..data.edge_hints import fashion_mnist_edges
from ..data.fill_shapes import FillShapesDataset
from ..diffusion import diffusion_loss
from ..io.controlnet_files import KIND
from ..model.conditioner import NULL_PROMPT
from ..nets.controlnet import ControlNet
from ..pipelines import Pipeline
from ..storage import save_checkpoint
from ..utils.images import image_grid, save_png, to_pil
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_module
from .controlnet_config import ControlNetTrainConfig
from .controlnet_hints import HeldHints, generate_from_hints, held_hints, obedience
from .logging import JsonlLog
from .steps import NonFiniteSteps, fused_adam, learning_rate, step_generator

GRID_HINTS = 8  # columns of the sample grids
IMAGE_CHANNELS = {"fill-shapes": 3, "fashion-mnist-edges": 1}  # of each dataset's 32x32 images


def check_base_model(pipe: Pipeline, config: ControlNetTrainConfig) -> None:
    """Refuse a base a ControlNet cannot be trained on, or whose images the data do not fit."""
    if pipe.config.net.kind != "unet" or pipe.config.task != "generation":
        raise ValueError(f"a ControlNet is trained on a text-to-image UNet; {pipe.name} is a "
                         f"{pipe.config.task} model with a {pipe.config.net.kind}")
    if pipe.dtype != torch.float32:
        raise ValueError(f"train on a float32 pipeline (the ControlNet takes the base's dtype), not {pipe.dtype}")
    factor = pipe.autoencoder.config.downsampling_factor
    if 2 ** (len(config.hint_widths) - 1) != factor:
        raise ValueError(f"hint_widths {config.hint_widths} encode the hint {2 ** (len(config.hint_widths) - 1)}x "
                         f"down but {pipe.name}'s latents are {factor}x smaller than its images: give "
                         f"{int(math.log2(factor)) + 1} widths")
    channels = IMAGE_CHANNELS[config.data.dataset]
    if pipe.autoencoder.config.in_channels != channels or pipe.config.image_size != 32:
        raise ValueError(f"the {config.data.dataset} images are 32x32 with {channels} channel(s); {pipe.name} makes "
                         f"{pipe.config.image_size}x{pipe.config.image_size} images with "
                         f"{pipe.autoencoder.config.in_channels}")


def load_control_data(config: ControlNetTrainConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(hints (N, C_hint, 32, 32) in [0, 1], images (N, C, 32, 32) in [-1, 1], prompts)."""
    data = config.data
    if data.dataset == "fashion-mnist-edges":
        return fashion_mnist_edges("train", limit=data.limit)
    items = FillShapesDataset(length=data.limit or 10_000, seed=config.seed, holdout=data.holdout)
    items = [items[i] for i in range(len(items))]
    return torch.stack([h for h, _, _, _ in items]), torch.stack([x for _, x, _, _ in items]), [c for *_, c, _ in items]


def train_controlnet(config: ControlNetTrainConfig, run_dir: str | Path, device: str | torch.device = "cpu",
                     resume: bool = True, progress: bool = True, max_steps: int | None = None,
                     pipe: Pipeline | None = None) -> dict:
    """Train, or resume, a ControlNet for config.base in `run_dir`. pipe: the base, already
    loaded in float32 (else config.base is loaded); its weights are not changed (its UNet is left
    frozen: no parameter requires a gradient), and it is left with the ControlNets it had."""
    run_dir = Path(run_dir)
    pipe = pipe or Pipeline.from_pretrained(config.base, device=torch.device(device))
    check_base_model(pipe, config)
    device = pipe.device
    hints, images, prompts = load_control_data(config)
    with torch.no_grad():
        latents = torch.cat([pipe.autoencoder.to_latent(chunk.to(device, pipe.dtype))
                             for chunk in tqdm(images.split(256), desc="encoding", disable=not progress)])
    vocabulary = sorted(set(prompts) | {NULL_PROMPT})
    table = pipe.encode_prompts(vocabulary)  # each distinct prompt's conditioning, (V, ...)
    prompt_index = torch.tensor([vocabulary.index(p) for p in prompts])
    null_index = vocabulary.index(NULL_PROMPT)

    pipe.net.requires_grad_(False).eval()  # the base is frozen
    torch.manual_seed(config.seed)  # the hint encoder's initial weights
    controlnet = ControlNet.from_unet(pipe.net, config.data.hint_channels, config.hint_widths)
    controlnet.name = run_dir.name
    opt = fused_adam(controlnet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    log = JsonlLog(run_dir / "log.jsonl")
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps)
    start, seconds_before = resume_module(run_dir, config, resume, controlnet, KIND, opt, nonfinite, log)
    held = held_hints(config.data.dataset, max(config.obedience_hints, GRID_HINTS))
    sampling = {"steps": config.sample_steps, "guidance": config.guidance}

    def save_state(done: int, final: dict | None = None) -> None:
        """A checkpoint, which is also an ldmkit ControlNet folder (load_controlnet reads it); with
        `final` (the run's summary), the finished ControlNet: run_dir/controlnet, no train state."""
        meta = {"kind": KIND, KIND: to_dict(controlnet.config), "type": "controlnet-run", "base": config.base,
                "train": to_dict(config), "step": done}
        weights = {KIND: controlnet.state_dict()}
        if final is not None:
            save_checkpoint(run_dir / "controlnet", weights, {**meta, "training": final})
            return
        seconds = seconds_before + time.perf_counter() - t0
        state = {"step": done, "optimizer": opt.state_dict(), "seconds": seconds,
                 "skipped_nonfinite": nonfinite.skipped}
        save_checkpoint(checkpoint_dir(run_dir, done), weights, meta, state)
        prune_checkpoints(run_dir, config.keep_checkpoints)

    end = config.steps if max_steps is None else min(config.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="controlnet", disable=not progress)
    saved_controlnets = list(pipe.controlnets)
    pipe.controlnets.clear()
    pipe.load_controlnet(controlnet)  # the images of the obedience measure and the grids
    t0, measuring, latest = time.perf_counter(), 0.0, {}  # measuring: seconds spent generating from held hints
    try:
        for step in bar:
            controlnet.train()
            gen = step_generator(config.seed, step)
            index = torch.randint(len(latents), (config.batch_size,), generator=gen)
            drop = torch.rand(config.batch_size, generator=gen) < config.prompt_dropout  # (B,) prompt -> ""
            rows = torch.where(drop, null_index, prompt_index[index])
            cond = {key: value[rows.to(value.device)] for key, value in table.items()}
            hint = hints[index].to(device, pipe.dtype)                          # (B, C_hint, 32, 32)
            for group in opt.param_groups:
                group["lr"] = learning_rate(config.lr, step, config.warmup_steps, config.steps)

            def controlled(x_t, t, cond=cond, hint=hint):
                return pipe.net(x_t, t, control=controlnet(x_t, t, hint, **cond), **cond)

            loss = diffusion_loss(controlled, latents[index], pipe.schedule, pipe.config.prediction, gen=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(controlnet.parameters(), config.grad_clip or math.inf)
            done = step + 1
            if nonfinite.finite(loss.item(), grad_norm.item()):
                opt.step()
            elif nonfinite.too_many:
                save_state(done)  # the weights are still those from before the streak began
                raise nonfinite.error(done, checkpoint_dir(run_dir, done), config.lr)

            measure = done % config.obedience_every == 0 or done == end
            grid = done % config.sample_every == 0 or done == end
            if measure or grid:
                began = time.perf_counter()
                controlnet.eval()
                need = max(config.obedience_hints if measure else 0, GRID_HINTS if grid else 0)
                generated = generate_from_hints(pipe, held_prefix(held, need), **sampling)
                if measure:
                    latest = obedience(held_prefix(held, config.obedience_hints), generated[:config.obedience_hints])
                if grid:
                    save_hint_grid(held_prefix(held, GRID_HINTS), generated[:GRID_HINTS],
                                   run_dir / "samples" / f"step_{done:06d}.png", done)
                measuring += time.perf_counter() - began
            record = {}
            if done % config.log_every == 0 or measure:
                seconds = (time.perf_counter() - t0 - measuring) / (done - start)  # training steps alone
                record = {"step": done, "loss": loss.item(), "grad_norm": grad_norm.item(),
                          "lr": opt.param_groups[0]["lr"], "seconds_per_step": seconds,
                          "measure_seconds": measuring, "skipped_nonfinite": nonfinite.skipped}
                if measure:
                    record |= {f"obey_{key}": value for key, value in latest.items()}
            if record:
                log.write(record)
                bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.2f}" for k, v in latest.items()})
            if done % config.checkpoint_every == 0 or done == end:
                save_state(done)
        bar.close()
        minutes = (seconds_before + time.perf_counter() - t0) / 60
        summary = {"steps": end, "train_minutes": minutes, "obedience": latest}
        plot_training(log.read(), run_dir / "training.png", title=run_dir.name)
        if end == config.steps:  # the finished ControlNet
            save_state(end, final=summary)
            summary["saved"] = str(run_dir / "controlnet")
        return summary
    finally:
        pipe.controlnets[:] = saved_controlnets


def held_prefix(held: HeldHints, count: int) -> HeldHints:
    """The first `count` held hints."""
    combos = None if held.combos is None else held.combos[:count]
    return HeldHints(held.dataset, held.hints[:count], held.targets[:count], held.prompts[:count], combos)


def save_hint_grid(held: HeldHints, images: torch.Tensor, path: Path, step: int) -> Path:
    """Rows: the hints, the ControlNet's samples from them, the images the hints were made from."""
    rows = [[to_pil(h * 2 - 1) for h in held.hints], [to_pil(x) for x in images], [to_pil(x) for x in held.targets]]
    tiles = [im.convert("RGB").resize((64, 64), 0) for row in rows for im in row]
    grid = image_grid(tiles, columns=len(held), row_labels=["hint", "sample", "target"])
    return save_png(grid, path, {"step": step, "prompts": held.prompts})


def plot_training(records: list[dict], out: Path, title: str = "") -> Path:
    """Loss (and its running mean) and the obedience measures against the step, one above the
    other on a shared step axis: sudden convergence is a jump in obedience."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    points = [(r["step"], r["loss"]) for r in records if math.isfinite(r.get("loss", math.nan))]
    if points:
        steps, losses = zip(*points)
        window = max(1, len(losses) // 30)
        smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                  for i in range(len(losses))]
        top.plot(steps, losses, alpha=0.3, lw=0.8)
        top.plot(steps, smooth, lw=1.5, label=f"running mean of {window}")
        top.legend(loc="upper right")
    top.set_ylabel("loss (LDM eq. 2)")
    keys = sorted({k for r in records for k in r if k.startswith("obey_")})
    for key in keys:
        marks = [(r["step"], r[key]) for r in records if key in r]
        bottom.plot(*zip(*marks), marker=".", label=key[len("obey_"):])
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_ylabel("obedience on held hints")
    bottom.set_xlabel("step")
    if keys:
        bottom.legend(loc="lower right")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
