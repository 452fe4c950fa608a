"""Training a small CLIP (Radford et al. 2021) on the project's captioned images: shapes renders
("a red circle in the top left"), Fashion-MNIST ("a photo of a sneaker") and a user's folder,
pooled.

Each step draws `candidates` x `batch_size` images and keeps the first image of each distinct
caption, up to `batch_size` pairs: the symmetric InfoNCE loss (nets/clip.py) counts every other
caption of the batch as a negative, so a caption twice would push an image away from its own
text. With 58 captions in shapes + Fashion-MNIST, a step is close to every caption once. The
texts are prepared once per distinct caption (token ids, or the frozen MiniLM's states). After
each AdamW step exp(logit_scale) is clipped to 100, as CLIP's. All randomness of a step comes
from a generator seeded by (seed, step), so a resumed run repeats an uninterrupted one exactly.

Every `eval_every` steps: top-1 caption retrieval of fresh shapes renders (another seed) among
all 48 captions, and zero-shot Fashion-MNIST classification of test images from "a photo of a
{class}". A run folder holds log.jsonl, training.png, checkpoints/ (each a CLIP folder too) and,
when finished, model/ (CLIP.from_pretrained reads it).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import to_dict
from ..data import ImageFolder, fashion_mnist, load_fashion_mnist, shapes
from ..model.clip import CLIP
from ..nets.clip import SmallCLIP, contrastive_loss
from ..storage import save_checkpoint
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_module
from .clip_config import CLIPTrainConfig
from .logging import JsonlLog, plot_losses
from .steps import NonFiniteSteps, fused_adam, learning_rate, step_generator

TIMING = ("seconds_per_step",)  # what differs between a resumed run and an uninterrupted one
EVAL_SEED_OFFSET = 1_000_003  # the retrieval renders' seed: never a training render's


def to_bytes(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as RGB uint8 (N, 3, H, W): 80,000 of 32x32 take 250 MB."""
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def load_pairs(config: CLIPTrainConfig) -> tuple[torch.Tensor, list[str]]:
    """(images (N, 3, S, S) uint8, captions) of every dataset named, pooled."""
    data, size = config.data, config.clip.image_size
    parts, captions = [], []
    for name in data.datasets:
        if name == "shapes":
            items = shapes.ShapesDataset(length=data.shapes_limit, size=size, seed=config.seed,
                                         holdout=data.shapes_holdout)
            items = [items[i] for i in range(len(items))]
            parts.append(to_bytes(torch.stack([x for x, _, _ in items])))
            captions += [c for _, c, _ in items]
        elif name == "fashion-mnist":
            images, labels = load_fashion_mnist("train", limit=data.fashion_limit, pad_to=size)
            parts.append(to_bytes(images))
            captions += [fashion_mnist.caption(int(y)) for y in labels]
        else:
            folder = ImageFolder(Path(data.path), size=size, channels=3)
            count = min(len(folder), data.folder_limit or len(folder))
            items = [folder[i] for i in range(count)]
            parts.append(to_bytes(torch.stack([x for x, _ in items])))
            captions += [t for _, t in items]
    return torch.cat(parts), captions


def distinct_captions(caption_ids: torch.Tensor, limit: int) -> torch.Tensor:
    """Positions of the first draw of each caption, in draw order, at most `limit` of them."""
    seen, keep = set(), []
    for position, caption in enumerate(caption_ids.tolist()):
        if caption not in seen:
            seen.add(caption)
            keep.append(position)
            if len(keep) == limit:
                break
    return torch.tensor(keep)


@torch.no_grad()
def shapes_retrieval(clip: CLIP, per_combination: int, seed: int, size: int = 32,
                     holdout: tuple = ()) -> dict[str, float]:
    """Top-1 accuracy of picking each fresh render's caption among all 48 (and of the held-out
    combinations' renders alone, where some are held out)."""
    gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    combos = [c for c in shapes.COMBINATIONS for _ in range(per_combination)]
    renders = torch.stack([shapes.render(*c, size=size, gen=gen) for c in combos])       # (48 n, 3, S, S)
    texts = clip.encode_text([shapes.caption(*c) for c in shapes.COMBINATIONS])         # (48, E)
    picked = (clip.embed_pixels(renders) @ texts.T).argmax(1)                          # (48 n,)
    truth = torch.arange(len(shapes.COMBINATIONS)).repeat_interleave(per_combination)
    hits = (picked.cpu() == truth).float()
    result = {"shapes_top1": hits.mean().item()}
    held = torch.tensor([c in holdout for c in combos])
    if held.any():
        result["shapes_top1_held_out"] = hits[held].mean().item()
    return result


@torch.no_grad()
def fashion_zero_shot(clip: CLIP, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Accuracy of classifying images (N, 1, H, W) in [-1, 1] by their nearest "a photo of a {class}"."""
    texts = clip.encode_text([fashion_mnist.caption(y) for y in range(len(fashion_mnist.CLASS_NAMES))])  # (10, E)
    picked = torch.cat([(clip.embed_pixels(chunk) @ texts.T).argmax(1).cpu() for chunk in images.split(batch_size)])
    return (picked == labels).float().mean().item()


def evaluate_clip(clip: CLIP, config: CLIPTrainConfig, fashion_test: tuple | None, count: int) -> dict[str, float]:
    """The run's measures, on the datasets it trains on: shapes retrieval, Fashion-MNIST zero-shot."""
    result = {}
    if "shapes" in config.data.datasets:
        result |= shapes_retrieval(clip, config.eval_renders, config.seed, config.clip.image_size,
                                   config.data.shapes_holdout)
    if fashion_test is not None:
        images, labels = fashion_test
        result["fashion_zero_shot"] = fashion_zero_shot(clip, images[:count], labels[:count])
    return result


def train_clip(config: CLIPTrainConfig, run_dir: str | Path, device: str | torch.device = "cpu", resume: bool = True,
               progress: bool = True, max_steps: int | None = None) -> dict:
    """Train, or resume, a small CLIP in `run_dir`; returns the run's summary."""
    run_dir, device = Path(run_dir), torch.device(device)
    images, captions = load_pairs(config)
    vocabulary = sorted(set(captions))
    position = {caption: k for k, caption in enumerate(vocabulary)}
    caption_ids = torch.tensor([position[c] for c in captions])                    # (N,)
    if len(vocabulary) < 2:
        raise ValueError("the data hold a single distinct caption: a contrastive model needs at least two")
    fashion_test = None
    if "fashion-mnist" in config.data.datasets:
        limit = None if config.data.fashion_limit is None else config.eval_images
        fashion_test = load_fashion_mnist("test", limit=limit, pad_to=config.clip.image_size)

    torch.manual_seed(config.seed)
    model = SmallCLIP(config.clip).to(device)
    clip = CLIP.from_small_clip(model, name=run_dir.name).to(device)
    with torch.no_grad():
        tokens, masks = clip.text_inputs(vocabulary)  # each distinct caption once: (V, L[, D]), (V, L)
    tokens, masks = tokens.to(device), masks.to(device)
    # no decay of gains, biases and the temperature (CLIP's and OpenCLIP's rule: tensors of < 2 dimensions)
    decayed = [p for p in model.parameters() if p.ndim >= 2]
    kept = [p for p in model.parameters() if p.ndim < 2]
    opt = fused_adam([{"params": decayed}, {"params": kept, "weight_decay": 0.0}], lr=config.lr,
                     weight_decay=config.weight_decay)
    log = JsonlLog(run_dir / "log.jsonl")
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps)
    start, seconds_before = resume_module(run_dir, config, resume, model, "clip", opt, nonfinite, log)

    def save_state(done: int) -> None:
        """A checkpoint, which is also an ldmkit CLIP folder (CLIP.from_pretrained reads it)."""
        state = {"step": done, "optimizer": opt.state_dict(), "seconds": seconds_before + time.perf_counter() - t0,
                 "skipped_nonfinite": nonfinite.skipped}
        meta = {"type": "clip", "name": run_dir.name, "clip": to_dict(config.clip), "train": to_dict(config),
                "step": done}
        save_checkpoint(checkpoint_dir(run_dir, done), {"clip": model.state_dict()}, meta, state)
        prune_checkpoints(run_dir, config.keep_checkpoints)

    end = config.steps if max_steps is None else min(config.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="clip", disable=not progress)
    t0, measuring, measures = time.perf_counter(), 0.0, {}
    for step in bar:
        model.train()
        gen = step_generator(config.seed, step)
        draws = torch.randint(len(images), (config.batch_size * config.candidates,), generator=gen)
        keep = draws[distinct_captions(caption_ids[draws], config.batch_size)]      # (B,) images, captions distinct
        pixels = images[keep].to(device).float() / 127.5 - 1                        # (B, 3, S, S) in [-1, 1]
        rows = caption_ids[keep].to(device)
        for group in opt.param_groups:
            group["lr"] = learning_rate(config.lr, step, config.warmup_steps, config.steps, config.lr_schedule)
        loss = contrastive_loss(model.encode_image(pixels), model.encode_text(tokens[rows], masks[rows]),
                                model.logit_scale, config.clip.max_logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
        done = step + 1
        if nonfinite.finite(loss.item(), grad_norm.item()):
            opt.step()
            model.clamp_logit_scale_()  # exp(logit_scale) <= 100, as CLIP's
        elif nonfinite.too_many:
            save_state(done)  # the weights are still those from before the streak began
            raise nonfinite.error(done, checkpoint_dir(run_dir, done), config.lr)

        measure = done % config.eval_every == 0 or done == end
        if measure:
            began = time.perf_counter()
            model.eval()
            count = len(fashion_test[0]) if fashion_test is not None and done == config.steps else config.eval_images
            measures = evaluate_clip(clip, config, fashion_test, count)
            measuring += time.perf_counter() - began
        if done % config.log_every == 0 or measure:
            record = {"step": done, "loss": loss.item(), "grad_norm": grad_norm.item(), "pairs": len(keep),
                      "logit_scale": model.logit_scale.exp().item(), "lr": opt.param_groups[0]["lr"],
                      "skipped_nonfinite": nonfinite.skipped,
                      "seconds_per_step": (time.perf_counter() - t0 - measuring) / (done - start)}
            log.write(record | (measures if measure else {}))
            bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in measures.items()})
        if done % config.checkpoint_every == 0 or done == end:
            save_state(done)
    bar.close()
    plot_losses(log.read(), ["loss", "logit_scale", "shapes_top1", "fashion_zero_shot"], run_dir / "training.png",
                title=run_dir.name)
    summary = {"steps": end, "train_minutes": (seconds_before + time.perf_counter() - t0) / 60,
               "captions": len(vocabulary), "images": len(images), **measures}
    if end == config.steps:  # the finished CLIP
        clip.save_pretrained(run_dir / "model", {"train": to_dict(config), "training": summary})
        summary["saved"] = str(run_dir / "model")
    return summary

