"""The unCLIP diffusion prior (ldmkit.nets.unclip_prior) in use: captions to CLIP image embeddings.

- `text_condition(clip, captions, length)`: what the prior reads of a caption, from the CLIP it was
  trained with: the text tower's token states (padded or cut to `length`, padding masked) and the
  pooled, normalised text embedding. The empty caption's is the null condition of classifier-free
  guidance (the training drops captions to it).
- `sample_image_embeddings`: DDIM (eta = 0: deterministic after the start) with x0 prediction and
  classifier-free guidance on the prior's output; the normalised x0 estimate clipped to [-10, 10]
  (ten standard deviations: only a guidance overshoot reaches it; diffusers' UnCLIPScheduler clips
  the prior's x0 likewise, clip_sample_range); the start x_T of embedding b drawn from
  generators[b], so it is the same alone or in a batch.
  It returns unnormalised embeddings (the CLIP's scale: their norms are near 1).
- `UnclipPrior`: a prior folder loaded with its CLIP and schedule.

A prior folder (`ldmkit train-unclip-prior`'s run_dir/model, or one of its checkpoints) holds
config.json {"kind": "unclip-prior", "prior": PriorConfig, "schedule": ScheduleConfig, "clip": the
CLIP's name or folder, "sampling": {"steps", "guidance"}, ...} and model.safetensors ("prior."
tensors, the dataset statistics among them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import from_dict, to_dict
from ..diffusion import Schedule, ScheduleConfig, clip_x0, make_schedule, sample
from ..model.clip import CLIP, TransformersCLIP
from ..model.folder import resolve_repo_path
from ..nets.clip import SmallCLIP
from ..nets.unclip_prior import PriorConfig, PriorTransformer
from ..storage import CheckpointError, load_checkpoint, save_checkpoint

X0_RANGE = 10.0  # the normalised x0 estimate is clipped to [-10, 10]


@dataclass
class TextCondition:
    """What the prior reads of B captions: token states (B, L, D_text), mask (B, L) bool (True: a
    real token), embedding (B, E) (L2-normalised)."""

    states: torch.Tensor
    mask: torch.Tensor
    embedding: torch.Tensor

    def __len__(self) -> int:
        return len(self.embedding)

    def rows(self, index: torch.Tensor | slice) -> TextCondition:
        return TextCondition(self.states[index], self.mask[index], self.embedding[index])

    def repeat(self, n: int) -> TextCondition:
        """Each row n times, row-major (a prompt's n samples together)."""
        return TextCondition(*(x.repeat_interleave(n, dim=0) for x in (self.states, self.mask, self.embedding)))

    def to(self, device: torch.device | str) -> TextCondition:
        return TextCondition(self.states.to(device), self.mask.to(device), self.embedding.to(device))

    def inputs(self) -> dict[str, torch.Tensor]:
        """The prior's keyword inputs."""
        return {"text_states": self.states, "text_mask": self.mask, "text_embedding": self.embedding}

    @staticmethod
    def cat(parts: Sequence[TextCondition]) -> TextCondition:
        return TextCondition(*(torch.cat(xs) for xs in zip(*((p.states, p.mask, p.embedding) for p in parts))))


@torch.no_grad()
def text_condition(clip: CLIP, captions: Sequence[str], length: int | None = None) -> TextCondition:
    """The captions' token states (padded or cut to `length`; None: as the CLIP pads them) and
    embeddings under `clip`: ldmkit's
    small CLIP (its transformer tower's normalised last states, or the frozen MiniLM's states it
    pools) or a transformers CLIP (the text model's last_hidden_state)."""
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions) or not captions:
        raise ValueError("captions must be a non-empty list of strings")
    tokens, mask = clip.text_inputs(list(captions))
    tokens, mask = tokens.to(clip.device), mask.to(clip.device)
    if isinstance(clip.model, SmallCLIP) and clip.model.config.text == "transformer":
        states = clip.model.text_tower.token_states(tokens, mask)                 # (B, L', D_text)
    elif isinstance(clip.model, SmallCLIP):
        states = tokens                                                            # MiniLM's (B, L', 384)
    elif isinstance(clip.model, TransformersCLIP):
        states = clip.model.model.text_model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
    else:
        raise ValueError(f"no token states known for a CLIP of type {type(clip.model).__name__}")
    embedding = clip.model.encode_text(tokens, mask).float()                      # (B, E)
    length = states.shape[1] if length is None else length
    states, mask = states[:, :length].float(), mask[:, :length].bool()
    short = length - states.shape[1]
    if short > 0:  # pad to `length` slots, masked out
        states = torch.cat([states, states.new_zeros(len(states), short, states.shape[2])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(len(mask), short)], dim=1)
    return TextCondition(states, mask, embedding)


@torch.no_grad()
def image_embeddings(clip: CLIP, images: torch.Tensor, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] -> the CLIP's normalised image embeddings (N, E), on the CPU;
    progress: a bar over the batches."""
    chunks = tqdm(images.split(batch_size), desc=f"{clip.name} image embeddings", disable=not progress)
    return torch.cat([clip.embed_pixels(chunk).cpu() for chunk in chunks])


def check_sampling(steps: int, guidance: float, eta: float) -> None:
    """Clear errors for the sampler's settings."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    if not guidance >= 1:
        raise ValueError(f"guidance must be >= 1 (1: the conditional prior alone, no guidance), got {guidance}; "
                         "for unconditional embeddings give the empty caption")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1] (0: DDIM, 1: ancestral), got {eta}")


@torch.no_grad()
def sample_image_embeddings(prior: PriorTransformer, sched: Schedule, condition: TextCondition,
                            null: TextCondition, generators: Sequence[torch.Generator], steps: int = 25,
                            guidance: float = 4.0, eta: float = 0.0) -> torch.Tensor:
    """CLIP image embeddings (B, E), unnormalised, for B conditions; null: the empty caption's
    condition (one row). Embedding b depends on generators[b] alone (its start and, for eta > 0,
    its noise)."""
    check_sampling(steps, guidance, eta)
    B, E = len(condition), prior.config.embedding_dim
    if len(generators) != B:
        raise ValueError(f"{len(generators)} generators for {B} conditions: give one per embedding")
    if len(null) != 1:
        raise ValueError(f"the null condition is one row (the empty caption's), got {len(null)}")
    device = prior.clip_mean.device
    x = torch.cat([torch.randn((1, E), generator=g) for g in generators]).to(device)  # x_T (B, E)
    cond = condition.to(device).inputs()
    uncond = null.to(device).repeat(B).inputs() if guidance != 1 else None
    x0 = sample(prior, x, sched, sampler="ddim", steps=steps, spacing="trailing", prediction="x0", cond=cond,
                uncond=uncond, guidance=guidance, gen=list(generators), eta=eta,
                denoiser_wrapper=lambda denoise: clip_x0(denoise, X0_RANGE))
    return prior.unnormalise(x0)


def save_prior(directory: str | Path, prior: PriorTransformer, schedule: ScheduleConfig, clip: str,
               sampling: dict, extra: dict | None = None, train_state: dict | None = None,
               ema: dict[str, torch.Tensor] | None = None) -> Path:
    """A prior folder (see the module docstring); with train_state (and the EMA's weights, as
    "ema." tensors), a checkpoint that loads too."""
    meta = {**(extra or {}), "kind": "unclip-prior", "prior": to_dict(prior.config), "schedule": to_dict(schedule),
            "clip": str(clip), "sampling": dict(sampling)}
    weights = {"prior": prior.state_dict()} | ({"ema": ema} if ema is not None else {})
    return save_checkpoint(directory, weights, meta, train_state)


class UnclipPrior:
    """A trained prior with its CLIP (for the captions) and its schedule, in eval mode."""

    def __init__(self, prior: PriorTransformer, clip: CLIP, schedule: ScheduleConfig, sampling: dict | None = None,
                 meta: dict | None = None):
        self.prior, self.clip = prior.eval().requires_grad_(False), clip.eval().requires_grad_(False)
        self.schedule_config, self.sched = schedule, make_schedule(schedule)
        self.sampling = {"steps": 25, "guidance": 4.0, **(sampling or {})}
        self.meta = dict(meta or {})
        self.null = self.text_condition([""])  # also checks that the CLIP's widths are the prior's
        c, E = prior.config, self.null.embedding.shape[1]
        if E != c.embedding_dim or self.null.states.shape[2] != c.text_state_dim:
            raise ValueError(f"the prior reads {c.embedding_dim}-d embeddings and {c.text_state_dim}-d token states; "
                             f"this CLIP gives {E} and {self.null.states.shape[2]}: use the CLIP it was trained with")

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu", clip: CLIP | None = None) -> UnclipPrior:
        """A prior folder, or one of a prior run's checkpoints; its CLIP from the folder's "clip"
        unless one is given."""
        path = resolve_repo_path(path)
        states, meta, _ = load_checkpoint(path)
        if meta.get("kind") != "unclip-prior" or "prior" not in states:
            raise CheckpointError(f"{path} does not hold an unCLIP prior (kind {meta.get('kind')!r})")
        prior = PriorTransformer(from_dict(PriorConfig, meta["prior"]))
        prior.load_state_dict(states["prior"])
        clip = clip if clip is not None else CLIP.from_pretrained(meta["clip"])
        return cls(prior.to(device), clip.to(device), from_dict(ScheduleConfig, meta["schedule"]), meta["sampling"],
                   meta)

    @property
    def device(self) -> torch.device:
        return self.prior.clip_mean.device

    def text_condition(self, captions: Sequence[str]) -> TextCondition:
        return text_condition(self.clip, captions, self.prior.config.text_length)

    def image_embeddings(self, prompt: str | Sequence[str], num_per_prompt: int = 1, seed: int = 0,
                         steps: int | None = None, guidance: float | None = None, eta: float = 0.0,
                         batch_size: int = 256) -> torch.Tensor:
        """(P * n, E) unnormalised image embeddings, prompt-major; embedding k (of all) from a
        generator seeded seed + k, so the same alone or in any batch. steps and guidance default
        to the folder's."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if isinstance(num_per_prompt, bool) or int(num_per_prompt) != num_per_prompt or num_per_prompt < 1:
            raise ValueError(f"num_per_prompt must be a whole number >= 1, got {num_per_prompt!r}")
        condition = self.text_condition(prompts).repeat(int(num_per_prompt))
        generators = [torch.Generator().manual_seed(seed + k) for k in range(len(condition))]
        steps = self.sampling["steps"] if steps is None else steps
        guidance = self.sampling["guidance"] if guidance is None else guidance
        return torch.cat([
            sample_image_embeddings(self.prior, self.sched, condition.rows(slice(s, s + batch_size)), self.null,
                                    generators[s:s + batch_size], steps, guidance, eta)
            for s in range(0, len(condition), batch_size)])
