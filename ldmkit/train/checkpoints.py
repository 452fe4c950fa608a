"""A run's checkpoints: step-numbered folders, the last K kept, the newest complete one found."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from ..storage.folder import CONFIG, TRAIN_STATE, WEIGHTS


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders with all their files, oldest first. Folders are renamed into place
    only once complete, so staging leftovers (dot-named) are never listed."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and all((p / f).is_file() for f in (WEIGHTS, CONFIG, TRAIN_STATE))
    ]  # fmt: skip
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints; also clear staging folders a killed write left."""
    found = complete_checkpoints(run_dir)
    for old in found[: max(0, len(found) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    root = Path(run_dir) / "checkpoints"
    for leftover in root.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


# What a resumed run may change: how long it runs (a run extended by more steps goes on exactly as
# one planned that long, where the learning rate after warm-up does not depend on the length) and
# how often it reports.
EXTENDABLE = ("steps", "checkpoint_every", "keep_checkpoints", "sample_every", "log_every", "latent_cache")


def resume_point(run_dir: str | Path, config) -> tuple[Path, dict, dict] | None:
    """(folder, state dicts, train state) of the run's newest complete checkpoint, or None for a
    fresh run. A checkpoint written under another config is refused, not silently continued,
    but for EXTENDABLE settings (steps only where the learning rate is constant after warm-up);
    options added to ldmkit since it was written count at their defaults."""
    from ..config import from_dict, to_dict
    from ..storage.folder import CheckpointError, load_checkpoint

    found = latest_checkpoint(run_dir)
    if found is None:
        return None
    states, meta, train_state = load_checkpoint(found, with_train_state=True)
    try:
        written = to_dict(from_dict(type(config), meta.get("train") or {}))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{found} holds a config this ldmkit cannot read ({error}); "
                              "use a new run folder or --no-resume") from None
    now = to_dict(config)
    extendable = [k for k in EXTENDABLE if k != "steps" or getattr(config, "lr_schedule", "constant") == "constant"]
    differ = sorted(k for k in set(written) | set(now) if written.get(k) != now.get(k))
    if [k for k in differ if k not in extendable]:
        raise CheckpointError(
            f"{found} was written by a run with another config (differing: {differ}); use a new run folder or "
            "--no-resume" + ("" if "steps" in extendable else " (this run's learning rate decays over its steps)")
        )
    if train_state["step"] > now.get("steps", math.inf):
        raise CheckpointError(f"{found} is at step {train_state['step']}, past this run's {now['steps']} steps")
    return found, states, train_state


def resume_module(run_dir: str | Path, config, resume: bool, module, key: str, optimizer, nonfinite,
                  log, ema=None, ema_key: str = "ema") -> tuple[int, float]:
    """A one-module run (a ControlNet, a CLIP, a noisy classifier, an unCLIP prior) picks up its
    newest checkpoint: the module's weights under `key` (and its EMA's under `ema_key`, given one),
    the optimiser, the skipped-step count, the log cut there; a fresh run starts a fresh log.
    Returns (step, seconds) done before."""
    point = resume_point(run_dir, config) if resume else None
    if point is None:
        if log.path.exists():
            log.path.unlink()
        return 0, 0.0
    found, stored, train_state = point
    module.load_state_dict(stored[key])
    if ema is not None:
        ema.load_state_dict(stored[ema_key])
    optimizer.load_state_dict(train_state["optimizer"])
    nonfinite.skipped = train_state.get("skipped_nonfinite", 0)
    log.truncate_after(train_state["step"])
    print(f"resuming from {found} (step {train_state['step']})")
    return train_state["step"], train_state["seconds"]
