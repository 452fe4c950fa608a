"""A run's checkpoints: step-numbered folders, the last K kept, the newest complete one found."""

from __future__ import annotations

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


def resume_point(run_dir: str | Path, config) -> tuple[Path, dict, dict] | None:
    """(folder, state dicts, train state) of the run's newest complete checkpoint, or None for a
    fresh run. A checkpoint written under another config is refused, not silently continued;
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
    if written != to_dict(config):
        raise CheckpointError(
            f"{found} was written by a run with another config; use a new run folder or --no-resume"
        )
    return found, states, train_state
