"""Training loops and what they share: EMA, logs, plots, checkpoint rotation."""

from .checkpoints import checkpoint_dir, complete_checkpoints, latest_checkpoint, prune_checkpoints
from .ema import EMA
from .logging import JsonlLog, plot_losses

__all__ = [
    "EMA", "JsonlLog", "checkpoint_dir", "complete_checkpoints", "latest_checkpoint", "plot_losses",
    "prune_checkpoints",
]
