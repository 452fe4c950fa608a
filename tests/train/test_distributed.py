"""Data-parallel training under torchrun (2 processes, gloo) equals one process with the same
global batch, up to float rounding: the diffusion trainer (DDP and FSDP), and the autoencoder trainer with a KL
posterior sample, and with an EMA codebook that restarts dead codes plus a discriminator whose
adaptive weight compares the global batch's gradients."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from torchrun import signal_process_tree, torchrun

from ldmkit.storage import load_checkpoint
from ldmkit.train.diffusion import train_diffusion
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS
from ldmkit.train.distributed import Rank


def test_rows_of_a_global_batch():
    assert [Rank(r, 4).rows(8) for r in range(4)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert Rank().rows(8) == slice(0, 8) and Rank().is_main and not Rank(1, 2).is_main


# the UNet under DDP and FSDP, and the DiT (its blocks the FSDP units it names) under FSDP
@pytest.mark.parametrize(("preset", "parallel"), [("tiny", "ddp"), ("tiny", "fsdp"), ("tiny-dit", "fsdp")])
def test_two_process_torchrun_matches_one_process(tmp_path, preset, parallel):
    train_diffusion(DIFFUSION_PRESETS[preset], tmp_path / "one", progress=False)
    launched = torchrun("train", "--preset", preset, "--out", str(tmp_path / "two"), "--set", f"parallel={parallel}")
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
    from ldmkit.apps.cli import main

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


def _kill_a_two_process_run(out) -> None:
    """A 2-process diffusion run SIGKILLed, launcher and workers, once it has logged a step."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "ldmkit", "train", "--preset", "tiny", "--steps", "500", "--set", "log_every=1", "--out", str(out)]
    child = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline and not (out / "log.jsonl").is_file():
        time.sleep(0.05)
    signal_process_tree(child.pid, signal.SIGKILL)  # the workers run in sessions of their own
    child.wait()
    assert (out / "log.jsonl").is_file(), "the run to kill never logged a step"


def test_two_process_runs_back_to_back_never_hang_at_exit(tmp_path):
    """Issue 25: a rank that freed its DDP wrappers after destroying the process group deadlocked
    in gloo's destructor (one run in five hung, after a SIGKILL test). Now every trainer leaves
    through distributed.run; after a killed run, both trainers run three times in a row, and the
    watchdog fails any run that takes 90 s."""
    _kill_a_two_process_run(tmp_path / "killed")
    sets = [arg for value in VQ_GAN for arg in ("--set", value)]
    for round_ in range(3):
        for command in (["train-autoencoder", "--preset", "tiny", *sets], ["train", "--preset", "tiny"]):
            launched = torchrun(*command, "--out", str(tmp_path / f"{command[0]}-{round_}"), timeout=90)
            assert launched.returncode == 0, launched.stderr[-3000:]
            assert launched.stdout.count("done:") == 1


def test_distributed_run_returns_the_result_and_reraises_errors(monkeypatch):
    """distributed.run hands back what the trainer returned, and re-raises what it raised."""
    from ldmkit.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "1")

    def train(rank, device):
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        distributed.run(train, "cpu", 4)
    assert distributed.run(lambda rank, device: (rank.world, device.type), "cpu", 4) == (1, "cpu")
