"""Training a miniature DALL-E (ldmkit.nets.dalle) on captioned images: the images are encoded
once by the frozen VQ first stage into code grids (kept in memory), the captions tokenised into
the run's vocabulary (ldmkit.family.dalle.CaptionVocabulary); each step draws a batch of
(caption, codes) pairs and takes an AdamW step on DALL-E's loss (1/8 text, 7/8 image), the
learning rate warmed up and then cosine-decayed. All randomness of a step comes from a generator
seeded by (seed, step) (dropout, when on, from the global generator seeded the same way), so a
resumed run repeats an uninterrupted one exactly.

Every `sample_every` steps: a grid of samples for fixed prompts (samples/step_XXXXXX.png, one row
per prompt, each image from its own fixed generator) and the losses on held-out images. A run
folder holds log.jsonl, loss.png, samples/, checkpoints/ (each a DALL-E folder too) and, when
finished, model/ (ldmkit.family.dalle.DalleGenerator reads it).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import to_dict
from ..data import fashion_mnist, load_fashion_mnist, shapes
from ..family.dalle import CaptionVocabulary, decode_codes, image_codes, save_dalle
from ..model import load_autoencoder, resolve_repo_path
from ..nets.dalle import DalleTransformer, dalle_loss, sample_codes
from ..utils.images import image_grid, save_png, to_pil
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_module
from .dalle_config import DalleTrainConfig
from .logging import JsonlLog, plot_losses
from .steps import NonFiniteSteps, fused_adam, learning_rate, step_generator

TIMING = ("seconds_per_step",)  # what differs between a resumed run and an uninterrupted one
SHAPES_IMAGES = shapes.TRAIN_RENDERS  # renders of a shapes run without a limit
SHAPES_PROMPTS = shapes.PREVIEW  # trained on by default


def captioned_images(config: DalleTrainConfig, split: str) -> tuple[torch.Tensor, list[str]]:
    """(images (N, C, S, S) in [-1, 1], captions) of the run's dataset: "train" (limit), or
    "test" (eval_images held-out ones: Fashion-MNIST's test split, shapes renders of another seed
    over every combination, held-out ones included)."""
    if config.dataset == "fashion-mnist":
        limit = config.limit if split == "train" else config.eval_images
        images, labels = load_fashion_mnist(split, pad_to=config.image_size, limit=limit)
        return images, [fashion_mnist.caption(int(k)) for k in labels]
    if split == "train":
        data = shapes.ShapesDataset(config.limit or SHAPES_IMAGES, size=config.image_size, seed=config.seed,
                                    holdout=config.shapes_holdout)
    else:
        data = shapes.ShapesDataset(config.eval_images, size=config.image_size, seed=config.seed + 1)
    items = [data[i] for i in range(len(data))]
    return torch.stack([image for image, _, _ in items]), [caption for _, caption, _ in items]


def preview_prompts(config: DalleTrainConfig) -> list[str]:
    """The fixed prompts of the sample grids: every class, or shapes seen and held out."""
    if config.dataset == "fashion-mnist":
        return [fashion_mnist.caption(k) for k in range(len(fashion_mnist.CLASS_NAMES))]
    return [shapes.caption(*c) for c in (*SHAPES_PROMPTS, *config.shapes_holdout)]


def load_first_stage(config: DalleTrainConfig, device: torch.device):
    """The VQ autoencoder of the run, with clear errors for a missing or a non-VQ one."""
    folder = resolve_repo_path(config.autoencoder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no VQ autoencoder at {config.autoencoder}: DALL-E needs one trained first, e.g. `ldmkit "
            "train-autoencoder --preset shapes-kl-f4 --set model.kind=vq --set model.codebook_size=512 --set "
            "model.ema=true --set model.restart_dead_codes=true --out runs/shapes-vq-f4`, then copy "
            f"runs/shapes-vq-f4/model to {config.autoencoder} (docs/family.md)")
    autoencoder = load_autoencoder(folder, device)
    if autoencoder.config.kind != "vq":
        raise ValueError(f"DALL-E reads discrete codes: {config.autoencoder} is a {autoencoder.config.kind!r} "
                         "autoencoder, give a VQ one (model.kind=vq)")
    return autoencoder


@torch.no_grad()
def held_out_losses(model: DalleTransformer, text: torch.Tensor, codes: torch.Tensor,
                    batch_size: int = 256) -> dict[str, float]:
    """The text and image cross-entropies on held-out pairs, in eval mode."""
    was_training = model.training
    model.eval()
    sums, count = {"text": 0.0, "image": 0.0}, 0
    for start in range(0, len(text), batch_size):
        t, c = text[start:start + batch_size], codes[start:start + batch_size]
        losses = dalle_loss(model(t, c), t, c)
        sums["text"] += losses.text.item() * len(t)
        sums["image"] += losses.image.item() * len(t)
        count += len(t)
    model.train(was_training)
    return {f"eval_{k}_loss": v / count for k, v in sums.items()}


@torch.no_grad()
def save_sample_grid(model: DalleTransformer, autoencoder, vocabulary: CaptionVocabulary, prompts: list[str],
                     per_prompt: int, path: Path, step: int) -> Path:
    """One row per prompt; image k of a row from a generator seeded k (the same at every grid)."""
    device = model.text_tokens.weight.device
    text = vocabulary.encode(prompts, model.config.text_length).repeat_interleave(per_prompt, dim=0).to(device)
    generators = [torch.Generator().manual_seed(i % per_prompt) for i in range(len(text))]
    images = decode_codes(autoencoder, sample_codes(model, text, generators))
    grid = image_grid([to_pil(x) for x in images], per_prompt, row_labels=prompts)
    return save_png(grid, path, {"step": step, "prompts": prompts})


def train_dalle(config: DalleTrainConfig, run_dir: str | Path, device: str | torch.device = "cpu",
                resume: bool = True, progress: bool = True, max_steps: int | None = None) -> dict:
    """Train, or resume, a miniature DALL-E in `run_dir`; returns the run's summary."""
    run_dir, device = Path(run_dir), torch.device(device)
    autoencoder = load_first_stage(config, device)
    images, captions = captioned_images(config, "train")
    test_images, test_captions = captioned_images(config, "test")
    if autoencoder.config.in_channels != images.shape[1]:
        raise ValueError(f"the autoencoder {config.autoencoder} takes {autoencoder.config.in_channels}-channel "
                         f"images; the {config.dataset} images have {images.shape[1]}")
    codes = image_codes(autoencoder, images).to(device)                            # (N, h, w)
    test_codes = image_codes(autoencoder, test_images).to(device)
    vocabulary = CaptionVocabulary.from_captions(captions)
    text = vocabulary.encode(captions, config.text_length).to(device)              # (N, L)
    test_text = vocabulary.encode(test_captions, config.text_length).to(device)
    prompts = preview_prompts(config)
    model_config = config.model_config(len(vocabulary), autoencoder.config.codebook_size, tuple(codes.shape[1:]))

    torch.manual_seed(config.seed)
    model = DalleTransformer(model_config).to(device)
    opt = fused_adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    log = JsonlLog(run_dir / "log.jsonl")
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps)
    start, seconds_before = resume_module(run_dir, config, resume, model, "dalle", opt, nonfinite, log)

    def save_state(done: int) -> None:
        state = {"step": done, "optimizer": opt.state_dict(), "seconds": seconds_before + time.perf_counter() - t0,
                 "skipped_nonfinite": nonfinite.skipped}
        save_dalle(checkpoint_dir(run_dir, done), model, vocabulary, config.autoencoder,
                   {"train": to_dict(config), "dataset": config.dataset, "step": done}, state)
        prune_checkpoints(run_dir, config.keep_checkpoints)

    end = config.steps if max_steps is None else min(config.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="dalle", disable=not progress)
    t0, aside, held_out = time.perf_counter(), 0.0, {}
    for step in bar:
        model.train()
        gen = step_generator(config.seed, step)
        index = torch.randint(len(codes), (config.batch_size,), generator=gen).to(device)
        if config.dropout > 0:
            torch.manual_seed(config.seed * 1_000_003 + step)  # dropout's masks: the step's own
        for group in opt.param_groups:
            group["lr"] = learning_rate(config.lr, step, config.warmup_steps, config.steps, config.lr_schedule)
        losses = dalle_loss(model(text[index], codes[index]), text[index], codes[index])
        opt.zero_grad(set_to_none=True)
        losses.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
        done = step + 1
        if nonfinite.finite(losses.loss.item(), grad_norm.item()):
            opt.step()
        elif nonfinite.too_many:
            save_state(done)  # the weights are still those from before the streak began
            raise nonfinite.error(done, checkpoint_dir(run_dir, done), config.lr)

        sample = done % config.sample_every == 0 or done == end
        if sample:
            began = time.perf_counter()
            held_out = held_out_losses(model, test_text, test_codes)
            save_sample_grid(model, autoencoder, vocabulary, prompts, config.samples_per_prompt,
                             run_dir / "samples" / f"step_{done:06d}.png", done)
            aside += time.perf_counter() - began
        if done % config.log_every == 0 or sample:
            record = {"step": done, "loss": losses.loss.item(), "text_loss": losses.text.item(),
                      "image_loss": losses.image.item(), "grad_norm": grad_norm.item(),
                      "lr": opt.param_groups[0]["lr"], "skipped_nonfinite": nonfinite.skipped,
                      "seconds_per_step": (time.perf_counter() - t0 - aside) / (done - start)}
            log.write(record | (held_out if sample else {}))
            bar.set_postfix(image_loss=f"{losses.image.item():.3f}")
        if done % config.checkpoint_every == 0 or done == end:
            save_state(done)
    bar.close()
    plot_losses(log.read(), ["loss", "text_loss", "image_loss", "eval_image_loss"], run_dir / "loss.png",
                title=run_dir.name)
    summary = {"steps": end, "train_minutes": (seconds_before + time.perf_counter() - t0) / 60,
               "vocabulary_size": len(vocabulary), "parameters": sum(p.numel() for p in model.parameters()),
               **held_out}
    if end == config.steps:  # the finished model
        save_dalle(run_dir / "model", model, vocabulary, config.autoencoder,
                   {"train": to_dict(config), "dataset": config.dataset, "training": summary})
        summary["saved"] = str(run_dir / "model")
    return summary
