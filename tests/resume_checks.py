"""What every trainer's resume test checks: a run stopped after two steps and resumed ends as the
uninterrupted one did, tensor for tensor in its checkpoint and final model, line for line in its
log but the timings."""

import json
from pathlib import Path

import torch

from ldmkit.storage import load_checkpoint


def logged(path: Path, timing: tuple[str, ...]) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in path.read_text().splitlines()]


def assert_resume_is_exact(train, config, whole: Path, run: Path, last_step: int = 4,
                           timing: tuple[str, ...] = ("seconds_per_step",)) -> None:
    """`train(config, run_dir, progress=, max_steps=)` stopped after 2 steps in `run`, then resumed,
    equals the uninterrupted run in `whole`."""
    train(config, run, progress=False, max_steps=2)
    assert not (run / "model").exists()
    train(config, run, progress=False)
    for folder in (f"checkpoints/step-{last_step:08d}", "model"):
        a, b = load_checkpoint(whole / folder)[0], load_checkpoint(run / folder)[0]
        assert a.keys() == b.keys(), folder
        for prefix in a:
            assert a[prefix].keys() == b[prefix].keys() and all(
                torch.equal(a[prefix][k], b[prefix][k]) for k in a[prefix]), (folder, prefix)
    assert logged(run / "log.jsonl", timing) == logged(whole / "log.jsonl", timing)
