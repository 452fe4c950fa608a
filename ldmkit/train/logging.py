"""What a training run leaves behind besides checkpoints: a JSONL log and a loss plot."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path


class JsonlLog:
    """One JSON object per line, flushed at once so a killed run keeps its log."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, object]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run repeats them)."""
        if not self.path.exists():
            return
        kept = [line for line in self.read() if line.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_losses(records: Iterable[Mapping[str, object]], keys: Iterable[str], out: str | Path, title: str = "") -> Path:
    """Plot each key of the log against its step, smoothed with a running mean, log-scaled
    when the values span more than a decade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    keys = [k for k in keys if any(k in r for r in records)]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4 * max(len(keys), 1), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [
            (r["step"], r[key])
            for r in records
            if key in r and isinstance(r[key], (int, float)) and math.isfinite(r[key])
        ]
        if not points:
            continue
        steps, values = zip(*points)
        ax.plot(steps, values, alpha=0.3, lw=0.8)
        window = max(1, len(values) // 50)
        smooth = [
            sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))
        ]
        ax.plot(steps, smooth, lw=1.5)
        if min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
