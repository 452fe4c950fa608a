"""benchmarks.fast_path on the tiny layout: it runs, times every lever and writes parity figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parent.parent


def test_fast_path_benchmark_tiny_writes_every_lever(tmp_path):
    out = tmp_path / "fast-path-tiny.json"
    command = [sys.executable, "-m", "benchmarks.fast_path", "--size", "tiny", "--threads", "1", "--repeats", "1",
               "--steps", "2", "--no-openvino", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    results = report["results"]
    assert {"fp32 eager", "bf16 weights", "fp32 channels_last", "fp32 deepcache 2", "fp32 deepcache 3"} <= set(results)
    assert results["fp32 eager"]["eps_rel_err"] == 0 and results["fp32 channels_last"]["eps_rel_err"] < 1e-4
    assert 0 < results["bf16 weights"]["eps_rel_err"] < 0.1  # bf16 round-off, a few percent at most
    assert set(report["deepcache_fp32"]) == {"branch 0", "branch 1"}
    assert report["machine"]["cpu"] and "load_average_before" in report["machine"]
