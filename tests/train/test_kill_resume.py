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

from ldmkit.storage import load_checkpoint

STEPS = 10
COMMAND = [sys.executable, "-m", "ldmkit", "train", "--preset", "tiny", "--steps", str(STEPS),
           "--set", "checkpoint_every=1", "--set", "sample_every=1000"]


def _run(out, kill_at_step: int | None = None, delay: float = 0.0) -> bool:
    """Train in a child process; SIGKILL it `delay` seconds after its log reaches `kill_at_step`
    steps (as logged: a resumed run's log already holds its earlier steps). True if it finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([*COMMAND, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    if kill_at_step is None:
        return child.wait(timeout=300) == 0
    log, deadline = out / "log.jsonl", time.monotonic() + 300
    while child.poll() is None and time.monotonic() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= kill_at_step:
            time.sleep(delay)  # somewhere in the next step, or in its checkpoint's write
            break
        time.sleep(0.005)
    if child.poll() is not None:
        return child.returncode == 0
    child.send_signal(signal.SIGKILL)
    child.wait()
    return False


def test_killed_and_resumed_run_ends_bit_identical(tmp_path):
    assert _run(tmp_path / "whole")
    rng = random.Random(0)
    # three kills at increasing steps, each at a random moment after that step was logged
    kills = sorted(rng.sample(range(1, STEPS - 1), 3))
    killed = sum(not _run(tmp_path / "killed", step, rng.uniform(0.0, 0.3)) for step in kills)
    assert _run(tmp_path / "killed")  # the last resume runs to the end
    assert killed >= 1
    whole, _, _ = load_checkpoint(tmp_path / "whole" / "checkpoints" / f"step-{STEPS:08d}")
    resumed, _, _ = load_checkpoint(tmp_path / "killed" / "checkpoints" / f"step-{STEPS:08d}")
    for part in ("unet", "ema_unet"):
        for key, value in whole[part].items():
            assert torch.equal(value, resumed[part][key]), f"{part}.{key}"
    log = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert len(log) == STEPS  # no step logged twice, none missing
