"""Training the unCLIP diffusion prior (ldmkit.nets.unclip_prior) on captioned images: the images
are embedded once by the frozen CLIP (normalised image embeddings, kept in memory), each distinct
caption once (token states and embedding), and the embeddings' per-dimension mean and std of the
training set become the prior's normalisation. Each step draws a batch of (caption, image
embedding) pairs, replaces a `caption_dropout` share of the captions by the empty caption (the
null condition of classifier-free guidance), and takes an AdamW step on the x0-prediction loss
E || x0 - prior(x_t, t, caption) ||^2 over the normalised embeddings (LDM eq. 2 with the x0 target;
unCLIP sec. 2.1); an EMA of the weights samples and is saved. All randomness of a step comes from
a generator seeded by (seed, step) (dropout, when on, from the global generator seeded the same
way), so a resumed run repeats an uninterrupted one exactly.

Every `eval_every` steps, with the EMA weights, for each caption of the held-out images:
`eval_samples` embeddings sampled (DDIM, `sample_steps`, at each `eval_guidance`) and measured
against the held-out images of that caption:
- cosine_gG: the mean cosine of a sampled embedding with a true one (per caption, then averaged);
- retrieval_gG: the share of sampled embeddings whose nearest caption text embedding (of all the
  dataset's captions) is their own;
- cosine_samples_gG: the mean cosine of two samples of one caption (their spread; compare
  cosine_images) and norm_gG their mean norm (CLIP's embeddings: 1);
against baselines: cosine_text (the caption's text embedding used as the image embedding),
cosine_images (two held-out images of the caption: what a sampler drawing true embeddings
scores; above it, samples are less varied than the images), cosine_oracle / retrieval_oracle (the
mean held-out image embedding of the caption: no single vector has a higher mean cosine) and
retrieval_images (the true embeddings' own retrieval: CLIP's zero-shot accuracy). On shapes, the
same over the held-out combinations alone (suffix _held_out).
A run folder holds log.jsonl, loss.png, checkpoints/ (each a prior folder too) and, when
finished, model/ (ldmkit.family.unclip_prior.UnclipPrior reads it).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..config import from_dict, to_dict
from ..data import fashion_mnist, shapes
from ..diffusion import Schedule, diffusion_loss, make_schedule
from ..family.unclip_prior import (
    TextCondition,
    UnclipPrior,
    image_embeddings,
    sample_image_embeddings,
    save_prior,
    text_condition,
)
from ..model.clip import CLIP
from ..nets.unclip_prior import PriorTransformer
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_module
from .dalle import captioned_images
from .ema import EMA
from .logging import JsonlLog, plot_losses
from .steps import NonFiniteSteps, fused_adam, learning_rate, step_generator
from .unclip_prior_config import UnclipPriorTrainConfig

TIMING = ("seconds_per_step",)  # what differs between a resumed run and an uninterrupted one


@dataclass
class EmbeddedSet:
    """A split embedded by the CLIP: images (N, E), the row of each one's caption (N,), and the
    captions' conditions (C + 1 rows: the captions, then the empty caption, the null)."""

    images: torch.Tensor
    caption_of: torch.Tensor
    captions: list[str]
    conditions: TextCondition

    @property
    def null_row(self) -> int:
        return len(self.captions)


def dataset_captions(config: UnclipPriorTrainConfig) -> list[str]:
    """Every caption of the run's dataset (the retrieval candidates): 10 classes, or 48 combinations."""
    if config.dataset == "fashion-mnist":
        return [fashion_mnist.caption(k) for k in range(len(fashion_mnist.CLASS_NAMES))]
    return [shapes.caption(*c) for c in shapes.COMBINATIONS]


def embed_split(clip: CLIP, config: UnclipPriorTrainConfig, split: str, length: int | None = None) -> EmbeddedSet:
    """The split's images and the dataset's captions through the CLIP (captions padded or cut to
    `length` token slots; None: as the CLIP pads them)."""
    images, captions = captioned_images(config, split)
    vocabulary = dataset_captions(config)
    row = {caption: k for k, caption in enumerate(vocabulary)}
    conditions = text_condition(clip, [*vocabulary, ""], length)                   # (C + 1) rows
    return EmbeddedSet(image_embeddings(clip, images), torch.tensor([row[c] for c in captions]), vocabulary,
                       conditions)


def drop_captions(rows: torch.Tensor, null_row: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Each caption row (B,) replaced by the null (the empty caption's) with probability `rate`:
    the prior then learns the unconditional distribution too, classifier-free guidance's other half."""
    dropped = torch.rand(rows.shape, generator=gen) < rate
    return torch.where(dropped, torch.full_like(rows, null_row), rows)


def embedding_statistics(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (E,) of the training set's image embeddings (N, E)."""
    if len(embeddings) < 2:
        raise ValueError(f"the statistics need at least 2 image embeddings, got {len(embeddings)}")
    return embeddings.mean(0), embeddings.std(0)


def held_out_captions(config: UnclipPriorTrainConfig, captions: list[str]) -> torch.Tensor:
    """(C,) bool: the captions of shapes combinations never trained on."""
    held = {shapes.caption(*c) for c in config.shapes_holdout} if config.dataset == "shapes" else set()
    return torch.tensor([c in held for c in captions])


def _per_caption_mean(values: torch.Tensor, rows: torch.Tensor, among: torch.Tensor) -> float:
    """The mean over captions `among` (bool (C,)) of each caption's mean value (values, rows (M,))."""
    means = [values[rows == c].float().mean() for c in among.nonzero().flatten().tolist()]
    return torch.stack(means).mean().item() if means else math.nan


@torch.no_grad()
def baselines(held_out: EmbeddedSet, subsets: dict[str, torch.Tensor]) -> dict[str, float]:
    """What no prior is needed for: the text embedding as the image embedding, the caption's mean
    held-out image embedding (the oracle), the true embeddings' retrieval (CLIP zero-shot)."""
    C, texts = len(held_out.captions), held_out.conditions.embedding[:-1].cpu()    # (C, E)
    true_mean = class_means(held_out)                                             # (C, E)
    captions = torch.arange(C)
    image_hits = ((held_out.images @ texts.T).argmax(1) == held_out.caption_of).float()
    counts = torch.bincount(held_out.caption_of, minlength=C).float()
    image_pairs = pair_cosines(true_mean * counts[:, None], counts)
    oracle_hits = ((F.normalize(true_mean, dim=1) @ texts.T).argmax(1) == captions).float()
    result = {}
    for suffix, among in subsets.items():
        seen = among & (counts > 0)  # captions with held-out images
        result |= {f"cosine_text{suffix}": _per_caption_mean((texts * true_mean).sum(1), captions, seen),
                   f"cosine_images{suffix}": _per_caption_mean(image_pairs, captions, among & (counts > 1)),
                   f"cosine_oracle{suffix}": _per_caption_mean(true_mean.norm(dim=1), captions, seen),
                   f"retrieval_images{suffix}": _per_caption_mean(image_hits, held_out.caption_of, seen),
                   f"retrieval_oracle{suffix}": _per_caption_mean(oracle_hits, captions, seen)}
    return result


def pair_cosines(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(C,): the mean cosine over pairs of distinct unit vectors of each group, from their sum
    (C, E) and count (C,): (|sum|^2 - n) / (n (n - 1)); 0 for a group of fewer than 2."""
    return (sums.pow(2).sum(1) - counts) / (counts * (counts - 1)).clamp(min=1)


def class_means(embedded: EmbeddedSet) -> torch.Tensor:
    """(C, E): each caption's mean normalised image embedding (zeros for a caption without images);
    the mean cosine of a unit vector u with the caption's images is u . mean."""
    sums = torch.zeros(len(embedded.captions), embedded.images.shape[1])
    sums.index_add_(0, embedded.caption_of, embedded.images.float())
    counts = torch.bincount(embedded.caption_of, minlength=len(embedded.captions)).clamp(min=1)
    return sums / counts[:, None]


@torch.no_grad()
def evaluate_prior(prior: PriorTransformer, sched: Schedule, held_out: EmbeddedSet, subsets: dict[str, torch.Tensor],
                   guidance: tuple[float, ...], per_caption: int, steps: int) -> dict[str, float]:
    """Sampled embeddings of each caption with held-out images, measured against them (module
    docstring); sample k of a caption from a generator seeded k, the same at every evaluation."""
    was_training = prior.training
    prior.eval()
    present = torch.bincount(held_out.caption_of, minlength=len(held_out.captions)) > 0  # (C,)
    rows = present.nonzero().flatten().repeat_interleave(per_caption)              # (P n,)
    condition, null = held_out.conditions.rows(rows), held_out.conditions.rows(slice(-1, None))
    texts, true_mean = held_out.conditions.embedding[:-1].cpu(), class_means(held_out)
    result = {}
    for g in guidance:
        generators = [torch.Generator().manual_seed(k % per_caption) for k in range(len(rows))]
        samples = sample_image_embeddings(prior, sched, condition, null, generators, steps, g).float().cpu()
        unit = F.normalize(samples, dim=1)                                         # (P n, E)
        cosines = (unit * true_mean[rows]).sum(1)
        hits = ((unit @ texts.T).argmax(1) == rows).float()
        groups = unit.view(-1, per_caption, unit.shape[1])                         # (P, n, E)
        spread = pair_cosines(groups.sum(1), torch.full((len(groups),), float(per_caption)))  # (P,)
        for suffix, among in subsets.items():
            result[f"cosine_g{g:g}{suffix}"] = _per_caption_mean(cosines, rows, among & present)
            result[f"retrieval_g{g:g}{suffix}"] = _per_caption_mean(hits, rows, among & present)
            if per_caption > 1:
                result[f"cosine_samples_g{g:g}{suffix}"] = _per_caption_mean(spread, rows[::per_caption],
                                                                             among & present)
        result[f"norm_g{g:g}"] = samples.norm(dim=1).mean().item()  # CLIP's embeddings have norm 1
    prior.train(was_training)
    return result


def subsets_of(config: UnclipPriorTrainConfig, held_out: EmbeddedSet) -> dict[str, torch.Tensor]:
    """The caption sets measured: all, and on shapes with a holdout, the held-out combinations."""
    held = held_out_captions(config, held_out.captions)
    return {"": torch.ones(len(held), dtype=torch.bool)} | ({"_held_out": held} if held.any() else {})


def train_unclip_prior(config: UnclipPriorTrainConfig, run_dir: str | Path, device: str | torch.device = "cpu",
                       resume: bool = True, progress: bool = True, max_steps: int | None = None) -> dict:
    """Train, or resume, an unCLIP prior in `run_dir`; returns the run's summary."""
    run_dir, device = Path(run_dir), torch.device(device)
    clip = CLIP.from_pretrained(config.clip, device)
    began = time.perf_counter()
    train = embed_split(clip, config, "train")
    held_out = embed_split(clip, config, "test", train.conditions.states.shape[1])
    embed_minutes = (time.perf_counter() - began) / 60
    images, conditions = train.images.to(device), train.conditions.to(device)
    subsets = subsets_of(config, held_out)
    sched = make_schedule(config.schedule)
    reference = baselines(held_out, subsets)

    torch.manual_seed(config.seed)
    prior = PriorTransformer(config.model_config(images.shape[1], conditions.states.shape[2],
                                                 conditions.states.shape[1])).to(device)
    prior.set_statistics(*embedding_statistics(train.images))
    ema_prior = PriorTransformer(prior.config).to(device).eval()  # samples: the evaluations and the model
    ema = EMA(prior, config.ema_decay)
    opt = fused_adam(prior.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    meta = {"dataset": config.dataset, "train": to_dict(config)}
    sampling = {"steps": config.sample_steps, "guidance": config.guidance}
    log = JsonlLog(run_dir / "log.jsonl")
    nonfinite = NonFiniteSteps(config.max_nonfinite_steps)
    start, seconds_before = resume_module(run_dir, config, resume, prior, "prior", opt, nonfinite, log, ema=ema)

    def save_state(done: int) -> None:
        """A checkpoint: a prior folder of the trained weights (it loads), the EMA's beside them."""
        train_state = {"step": done, "optimizer": opt.state_dict(), "skipped_nonfinite": nonfinite.skipped,
                       "seconds": seconds_before + time.perf_counter() - t0}
        save_prior(checkpoint_dir(run_dir, done), prior, config.schedule, config.clip, sampling,
                   {**meta, "step": done}, train_state, ema.state_dict())
        prune_checkpoints(run_dir, config.keep_checkpoints)

    end = config.steps if max_steps is None else min(config.steps, max_steps)
    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="unclip-prior", disable=not progress)
    t0, aside, measures = time.perf_counter(), 0.0, {}
    for step in bar:
        prior.train()
        gen = step_generator(config.seed, step)
        index = torch.randint(len(images), (config.batch_size,), generator=gen)
        rows = drop_captions(train.caption_of[index], train.null_row, config.caption_dropout, gen).to(device)  # (B,)
        inputs = conditions.rows(rows).inputs()
        if config.dropout > 0:
            torch.manual_seed(config.seed * 1_000_003 + step)  # dropout's masks: the step's own
        for group in opt.param_groups:
            group["lr"] = learning_rate(config.lr, step, config.warmup_steps, config.steps, config.lr_schedule)
        x0 = prior.normalise(images[index.to(device)])                                # (B, E)
        loss = diffusion_loss(functools.partial(prior, **inputs), x0, sched, "x0", gen=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(prior.parameters(), config.grad_clip or math.inf)
        done = step + 1
        if nonfinite.finite(loss.item(), grad_norm.item()):
            opt.step()
            ema.update(prior, step)
        elif nonfinite.too_many:
            save_state(done)  # the weights are still those from before the streak began
            raise nonfinite.error(done, checkpoint_dir(run_dir, done), config.lr)

        measure = done % config.eval_every == 0 or done == end
        if measure:
            began = time.perf_counter()
            ema.copy_to(ema_prior)
            measures = evaluate_prior(ema_prior, sched, held_out, subsets, config.eval_guidance, config.eval_samples,
                                      config.sample_steps)
            aside += time.perf_counter() - began
        if done % config.log_every == 0 or measure:
            record = {"step": done, "loss": loss.item(), "grad_norm": grad_norm.item(),
                      "lr": opt.param_groups[0]["lr"], "dropped": (rows == train.null_row).float().mean().item(),
                      "skipped_nonfinite": nonfinite.skipped,
                      "seconds_per_step": (time.perf_counter() - t0 - aside) / (done - start)}
            log.write(record | (measures | reference if measure else {}))
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if done % config.checkpoint_every == 0 or done == end:
            save_state(done)
    bar.close()
    if not measures and end == config.steps:  # a finished run opened again: measured once more
        ema.copy_to(ema_prior)
        measures = evaluate_prior(ema_prior, sched, held_out, subsets, config.eval_guidance, config.eval_samples,
                                  config.sample_steps)
    plot_losses(log.read(), ["loss", *[f"cosine_g{g:g}" for g in config.eval_guidance],
                             *[f"retrieval_g{g:g}" for g in config.eval_guidance]], run_dir / "loss.png",
                title=run_dir.name)
    summary = {"steps": end, "train_minutes": (seconds_before + time.perf_counter() - t0) / 60,
               "embed_minutes": embed_minutes, "images": len(images),
               "parameters": sum(p.numel() for p in prior.parameters()), **measures, **reference}
    if end == config.steps:  # the finished prior: the EMA weights, as measured last
        ema.copy_to(ema_prior)
        save_prior(run_dir / "model", ema_prior, config.schedule, config.clip, sampling, {**meta, "training": summary})
        summary["saved"] = str(run_dir / "model")
    return summary


def evaluate_saved_prior(folder: str | Path, device: str | torch.device = "cpu", eval_images: int | None = None,
                         per_caption: int | None = None, guidance: tuple[float, ...] | None = None) -> dict[str, float]:
    """The run's sample evaluation (module docstring) of a saved prior folder, on its training
    run's dataset and held-out images; the run's settings unless given."""
    loaded = UnclipPrior.from_folder(folder, device)
    if "train" not in loaded.meta:
        raise ValueError(f"{folder} records no training run: its dataset and held-out images are unknown")
    config = from_dict(UnclipPriorTrainConfig, loaded.meta["train"])
    if eval_images is not None:
        config = replace(config, eval_images=eval_images)
    held_out = embed_split(loaded.clip, config, "test", loaded.prior.config.text_length)
    subsets = subsets_of(config, held_out)
    return baselines(held_out, subsets) | evaluate_prior(
        loaded.prior, loaded.sched, held_out, subsets, guidance or config.eval_guidance,
        per_caption or config.eval_samples, config.sample_steps)
