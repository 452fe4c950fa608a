"""Data-parallel training under torchrun (2 processes, gloo) equals one process with the same
global batch, up to float rounding: the diffusion trainer (DDP and FSDP), and the autoencoder trainer with a KL
posterior sample, and with an EMA codebook that restarts dead codes plus a discriminator whose
adaptive weight compares the global batch's gradients."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from ldmkit.io import load_checkpoint
from ldmkit.train.diffusion import train_diffusion
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS
from ldmkit.train.distributed import Rank


def test_rows_of_a_global_batch():
    assert [Rank(r, 4).rows(8) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert Rank().rows(8) == slice(0, 8) and Rank().is_main and not Rank(1, 2).is_main


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ldmkit.cli", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_torchrun_matches_one_process(tmp_path, parallel):
    train_diffusion(DIFFUSION_PRESETS["tiny"], tmp_path / "one", progress=False)
    launched = torchrun("train", "--preset", "tiny", "--out", str(tmp_path / "two"), "--set", f"parallel={parallel}")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("done:") == 1  # rank 0 alone reports
    one, _, alone = load_checkpoint(tmp_path / "one" / "checkpoints" / "step-00000004", with_train_state=True)
    two, _, shared = load_checkpoint(tmp_path / "two" / "checkpoints" / "step-00000004", with_train_state=True)
    for part in ("unet", "ema_unet"):
        assert one[part].keys() == two[part].keys()
        for key, value in one[part].items():
            torch.testing.assert_close(two[part][key], value, rtol=0, atol=1e-5, msg=f"{part}.{key}")
    # the optimiser's moments are written whole, in one process's layout, even when sharded
    moments = [state["optimizer"]["state"] for state in (alone, shared)]
    assert moments[0].keys() == moments[1].keys()
    for index, state in moments[0].items():
        torch.testing.assert_close(moments[1][index]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-6)
    logs = [(tmp_path / run / "log.jsonl").read_text().splitlines() for run in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 4
    assert sorted(p.name for p in (tmp_path / "two" / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]


KL = ["loss.kl_weight=0.01"]
VQ_GAN = ["model.kind=vq", "model.codebook_size=16", "model.ema=true", "model.restart_dead_codes=true",
          "loss.gan_weight=0.5", "loss.disc_norm=group", "loss.disc_channels=8"]


@pytest.mark.parametrize("settings", [KL, VQ_GAN], ids=["kl", "vq-ema-restarts-gan"])
def test_two_process_autoencoder_training_matches_one_process(tmp_path, settings):
    from ldmkit.cli import main

    sets = [arg for value in settings for arg in ("--set", value)]
    main(["train-autoencoder", "--preset", "tiny", "--out", str(tmp_path / "one"), *sets])
    launched = torchrun("train-autoencoder", "--preset", "tiny", "--out", str(tmp_path / "two"), *sets)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("done:") == 1
    one, _, _ = load_checkpoint(tmp_path / "one" / "checkpoints" / "step-00000004")
    two, _, _ = load_checkpoint(tmp_path / "two" / "checkpoints" / "step-00000004")
    assert one.keys() == two.keys() == ({"autoencoder", "discriminator"} if "loss.gan_weight=0.5" in settings
                                        else {"autoencoder"})
    for part in one:
        for key, value in one[part].items():
            torch.testing.assert_close(two[part][key], value, rtol=0, atol=5e-5, msg=f"{part}.{key}")
    logs = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 4
    for alone, shared in zip(*logs):  # the logged losses are the global batch's
        for key in ("rec", "reg", "gan_weight", "d_loss", "perplexity"):
            if key in alone:
                assert shared[key] == pytest.approx(alone[key], rel=1e-4), key
    if "model.kind=vq" in settings:
        assert "gan_weight" in logs[0][-1] and "perplexity" in logs[0][-1]


def test_fsdp_resumes_a_one_process_checkpoint(tmp_path):
    """Checkpoints hold whole tensors in one layout: a run stopped alone at step 2 goes on under
    FSDP (weights, EMA and Adam moments sharded on loading) to the uninterrupted run's step 4."""
    config = replace(DIFFUSION_PRESETS["tiny"], parallel="fsdp")
    train_diffusion(config, tmp_path / "alone", progress=False)
    train_diffusion(config, tmp_path / "resumed", progress=False, max_steps=2)
    launched = torchrun("train", "--preset", "tiny", "--out", str(tmp_path / "resumed"), "--set", "parallel=fsdp")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "resuming from" in launched.stdout and "(step 2)" in launched.stdout
    alone, _, _ = load_checkpoint(tmp_path / "alone" / "checkpoints" / "step-00000004")
    resumed, _, _ = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step-00000004")
    for part in ("unet", "ema_unet"):
        for key, value in alone[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=0, atol=1e-5, msg=f"{part}.{key}")
