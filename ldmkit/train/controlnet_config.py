"""Typed configs of a ControlNet training run, and named presets."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.shapes import DEFAULT_HOLDOUT

# the hint datasets: fill-shapes (data/fill_shapes.py: outline -> filled shape, prompts without the
# place) and fashion-mnist-edges (data/edge_hints.py: Sobel edges -> garment, class prompts)
HINT_CHANNELS = {"fill-shapes": 3, "fashion-mnist-edges": 1}


@dataclass(frozen=True)
class ControlDataConfig:
    dataset: str = "fill-shapes"  # fill-shapes | fashion-mnist-edges
    limit: int | None = 10_000  # training items: fill-shapes draws this many; fashion-mnist-edges (None: all 60,000)
    # fill-shapes: combinations never trained on, by default those the shapes model never saw either
    holdout: tuple[tuple[str, str, str], ...] = DEFAULT_HOLDOUT

    def __post_init__(self):
        if self.dataset not in HINT_CHANNELS:
            raise ValueError(f"unknown hint dataset {self.dataset!r}; choose one of {sorted(HINT_CHANNELS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 (or null for all), got {self.limit}")

    @property
    def hint_channels(self) -> int:
        return HINT_CHANNELS[self.dataset]


@dataclass(frozen=True)
class ControlNetTrainConfig:
    base: str = "shapes"  # the frozen model: a shipped name or a model folder
    data: ControlDataConfig = ControlDataConfig()
    hint_widths: tuple[int, ...] = (16, 32, 64)  # the hint encoder; 2 ** (len - 1) = the autoencoder's factor
    steps: int = 5000
    batch_size: int = 32
    lr: float = 1e-4  # AdamW (SD ControlNets are trained at 1e-5; this small model takes more)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # the zero convolutions make a cold start safe
    grad_clip: float | None = 1.0
    prompt_dropout: float = 0.5  # share of prompts replaced by "": the paper's 50%, so the hint alone must steer
    seed: int = 0
    log_every: int = 25
    obedience_every: int = 100  # generate from the held hints and log how well the images obey them
    obedience_hints: int = 16  # held hints (fill-shapes: every quadrant equally often)
    sample_every: int = 500  # a grid of hints, samples and targets (samples/step_*.png)
    sample_steps: int = 10  # sampler steps of those images
    guidance: float | None = None  # of those images; None: the base model's default
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 20  # non-finite steps are skipped; this many in a row stop the run

    def __post_init__(self):
        object.__setattr__(self, "hint_widths", tuple(self.hint_widths))
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0 <= self.prompt_dropout <= 1:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {self.prompt_dropout}")
        if not self.hint_widths or min(self.hint_widths) < 1:
            raise ValueError(f"hint_widths must be positive numbers, got {self.hint_widths}")
        for name in ("log_every", "obedience_every", "sample_every", "checkpoint_every", "obedience_hints",
                     "sample_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


CONTROLNET_PRESETS: dict[str, ControlNetTrainConfig] = {
    # outline -> filled shape on the shipped shapes model; 0.2-0.3 s a step at batch 32 on one CPU
    # thread (docs/controlnet.md): about 20-30 minutes with its obedience measures
    "shapes-control": ControlNetTrainConfig(),
    # Sobel edges -> garment on the shipped fashion-mnist-f4 model (docs/controlnet.md)
    "fashion-mnist-edges": ControlNetTrainConfig(
        base="fashion-mnist-f4", data=ControlDataConfig(dataset="fashion-mnist-edges", limit=20_000, holdout=()),
    ),
    "tiny": ControlNetTrainConfig(
        data=ControlDataConfig(limit=32), hint_widths=(8, 16, 16), steps=4, batch_size=4, log_every=1,
        obedience_every=2, obedience_hints=4, sample_every=2, sample_steps=2, checkpoint_every=2,
    ),
}
