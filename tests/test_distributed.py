"""Data-parallel training under torchrun (2 processes, gloo) equals one process with the same
global batch, up to float rounding."""

import os
import subprocess
import sys

import torch

from ldmkit.io import load_checkpoint
from ldmkit.train.diffusion import train_diffusion
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS
from ldmkit.train.distributed import Rank


def test_rows_of_a_global_batch():
    assert [Rank(r, 4).rows(8) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert Rank().rows(8) == slice(0, 8) and Rank().is_main and not Rank(1, 2).is_main


def test_two_process_torchrun_matches_one_process(tmp_path):
    train_diffusion(DIFFUSION_PRESETS["tiny"], tmp_path / "one", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "ldmkit.cli", "train", "--preset", "tiny", "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("done:") == 1  # rank 0 alone reports
    one, _, _ = load_checkpoint(tmp_path / "one" / "checkpoints" / "step-00000004")
    two, _, _ = load_checkpoint(tmp_path / "two" / "checkpoints" / "step-00000004")
    for part in ("unet", "ema_unet"):
        for key, value in one[part].items():
            torch.testing.assert_close(two[part][key], value, rtol=0, atol=1e-5, msg=f"{part}.{key}")
    logs = [(tmp_path / run / "log.jsonl").read_text().splitlines() for run in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 4
    assert sorted(p.name for p in (tmp_path / "two" / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]
