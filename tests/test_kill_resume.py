"""A training run killed with SIGKILL at random moments (checkpoints are written at every step,
so some kills land inside a write), then resumed each time, ends bit-identical to a run that
was never interrupted."""

import os
import random
import signal
import subprocess
import sys
import time

import torch

from ldmkit.io import load_checkpoint

STEPS = 10
COMMAND = [sys.executable, "-m", "ldmkit.cli", "train", "--preset", "tiny", "--steps", str(STEPS),
           "--set", "checkpoint_every=1", "--set", "sample_every=1000"]


def _run(out, kill_after: float | None = None) -> bool:
    """Train in a child process; SIGKILL it after `kill_after` seconds. True if it finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([*COMMAND, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    if kill_after is None:
        return child.wait(timeout=300) == 0
    try:
        return child.wait(timeout=kill_after) == 0
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
        child.wait()
        return False


def test_killed_and_resumed_run_ends_bit_identical(tmp_path):
    assert _run(tmp_path / "whole")
    start = time.perf_counter()
    assert _run(tmp_path / "probe")  # how long a run takes here, to place the kills
    duration = time.perf_counter() - start
    rng = random.Random(0)
    killed, attempts, finished = 0, 0, False
    while not finished:
        # a kill time in the second half of a fresh start's run: past the start-up, inside the
        # steps (a resumed run has fewer steps left, so a late kill may find it finished)
        kill_after = duration * rng.uniform(0.5, 0.95) if attempts < 3 else None
        finished = _run(tmp_path / "killed", kill_after)
        attempts, killed = attempts + 1, killed + (not finished)
    assert killed >= 1
    whole, _, _ = load_checkpoint(tmp_path / "whole" / "checkpoints" / f"step-{STEPS:08d}")
    resumed, _, _ = load_checkpoint(tmp_path / "killed" / "checkpoints" / f"step-{STEPS:08d}")
    for part in ("unet", "ema_unet"):
        for key, value in whole[part].items():
            assert torch.equal(value, resumed[part][key]), f"{part}.{key}"
    log = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert len(log) == STEPS  # no step logged twice, none missing
