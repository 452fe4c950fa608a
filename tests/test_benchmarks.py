"""benchmarks.vs_diffusers on its tiny config: it runs, checks parity and writes every part."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parent.parent  # benchmarks run from the repository root as -m benchmarks.NAME
PARTS = ("unet forward", "unet training step", "vae encode", "vae decode", "generation (batch 1)")


def test_vs_diffusers_tiny_writes_every_part(tmp_path):
    out = tmp_path / "vs-diffusers-tiny.json"
    # One thread, one round, a small matmul and no memory children (each one is a fresh
    # torch + transformers import): the smoke run stays well under 30 s on a shared CPU.
    command = [sys.executable, "-m", "benchmarks.vs_diffusers", "--config", "tiny", "--repeats", "1",
               "--threads", "1", "--matmul-size", "256", "--no-rss", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())

    parity = report["results"]["parity"]
    assert parity["passed"]
    assert {"unet forward", "vae decode", "generation (batch 1)", "training loss"} <= set(parity["rel err"])
    assert all(value <= parity["target"] for value in parity["rel err"].values())

    parts = report["results"]["parts"]
    assert set(parts) == set(PARTS)
    for part in PARTS:
        for library in ("ldmkit", "diffusers"):
            assert len(parts[part][library]["seconds"]) == 1
            assert parts[part][library]["median"] > 0, (part, library)
        assert parts[part]["ratio diffusers/ldmkit"] > 0
    training = parts["unet training step"]
    assert training["flops"]["ldmkit"]["total"] == training["flops"]["diffusers"]["total"] > 0
    assert all(training["gflop/s"][library] > 0 for library in ("ldmkit", "diffusers"))
    assert report["matmul peak"]["gflop/s"] > 0
    assert report["settings"]["threads"] == 1
    assert report["settings"]["ldmkit options"] == {"channels_last": False,
                                                    "compile": {"requested": False, "active": False}}
    assert "ratio = diffusers time / ldmkit time" in done.stdout


def test_parity_failure_stops_the_benchmark():
    import benchmarks.vs_diffusers as vs_diffusers

    assert vs_diffusers.require_parity({"unet forward": 1e-6, "vae decode": 0.0})
    assert not vs_diffusers.require_parity({"unet forward": 1e-6, "vae decode": 0.5})
    assert not vs_diffusers.require_parity({"generation (batch 1)": math.nan})  # NaN is no agreement


def test_upsample_benchmark_times_both_ways_and_they_agree(tmp_path):
    out = tmp_path / "upsample.json"
    command = [sys.executable, "-m", "benchmarks.upsample", "--only", "small UNet 8->16", "--repeats", "1",
               "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    [row] = json.loads(out.read_text())["rows"]
    assert row["backward"] and row["input"] == [4, 256, 8, 8]
    assert row["max_abs_difference"] < 1e-4 and row["median_two_step"] > 0 and row["median_small_grid"] > 0


def test_lcm_curve_scores_every_cell_against_the_teacher(tmp_path):
    """A 6-step distillation scored on 2 images per class: every cell, the teacher's, the plot."""
    import dataclasses

    from ldmkit.train.distill import distill
    from ldmkit.train.distill_config import DISTILL_PRESETS

    distill(dataclasses.replace(DISTILL_PRESETS["tiny"], steps=6, sample_every=6), tmp_path / "run", progress=False)
    out = tmp_path / "lcm.json"
    command = [sys.executable, "-m", "benchmarks.lcm_curve", "--model", str(tmp_path / "run" / "model"),
               "--per-class", "2", "--steps", "1", "2", "--threads", "1", "--out", str(out),
               "--plot", str(tmp_path / "lcm.png")]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    results = json.loads(out.read_text())
    cells = {(c["sampler"], c["steps"]): c for c in results["cells"]}
    assert set(cells) == {("lcm", 1), ("lcm", 2), ("dpmpp_2m", 20)}
    assert (cells["lcm", 1]["nfe"], cells["lcm", 2]["nfe"], cells["dpmpp_2m", 20]["nfe"]) == (1, 2, 20)
    assert set(results["fd_over_teacher_20"]) == {"1", "2"} and (tmp_path / "lcm.png").stat().st_size > 0
