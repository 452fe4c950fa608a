"""The latent diffusion training loop (stage 2): tiny runs, exact resume, bad input."""

import json
from dataclasses import replace

import pytest
import torch

from ldmkit.model import LatentDiffusionConfig
from ldmkit.storage import load_checkpoint
from ldmkit.train.diffusion import train_diffusion
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS, DiffusionDataConfig

TINY = DIFFUSION_PRESETS["tiny"]


# the UNet, and the text-conditioned DiT with a cosine learning rate
@pytest.mark.parametrize("config", [TINY, replace(DIFFUSION_PRESETS["tiny-dit"], lr_schedule="cosine")],
                         ids=["unet", "dit-cosine"])
def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path, config):
    train_diffusion(config, tmp_path / "whole", progress=False)
    train_diffusion(config, tmp_path / "split", progress=False, max_steps=2)
    train_diffusion(config, tmp_path / "split", progress=False)
    whole, _, _ = load_checkpoint(tmp_path / "whole" / "checkpoints" / "step-00000004")
    split, _, _ = load_checkpoint(tmp_path / "split" / "checkpoints" / "step-00000004")
    for part in ("unet", "ema_unet"):
        for key, value in whole[part].items():
            assert torch.equal(value, split[part][key]), f"{part}.{key}"
    assert len((tmp_path / "split" / "log.jsonl").read_text().splitlines()) == 4
    # a checkpoint is the model as the run would save it at that step (FD against training time)
    from ldmkit import Pipeline
    from ldmkit.train.diffusion import pipeline_from_checkpoint

    at_end = pipeline_from_checkpoint(tmp_path / "split" / "checkpoints" / "step-00000004")
    saved = Pipeline.from_pretrained(tmp_path / "split" / "model")
    torch.testing.assert_close(at_end.generate("a photo of a bag", steps=2, output="latent"),
                               saved.generate("a photo of a bag", steps=2, output="latent"))


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it in the loop runs."""


def test_a_run_killed_right_after_a_checkpoint_lands_keeps_every_step_in_its_log(tmp_path, monkeypatch):
    import ldmkit.train.diffusion as diffusion

    written = diffusion.save_checkpoint

    def save_then_die(folder, *args, **kwargs):
        written(folder, *args, **kwargs)
        if folder.name == "step-00000002":
            raise _Killed

    monkeypatch.setattr(diffusion, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train_diffusion(TINY, tmp_path, progress=False)
    monkeypatch.setattr(diffusion, "save_checkpoint", written)
    train_diffusion(TINY, tmp_path, progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_latent_cache_is_shared_by_runs_and_changes_nothing(tmp_path):
    cached = replace(TINY, steps=2, latent_cache=str(tmp_path / "cache"))
    train_diffusion(replace(TINY, steps=2), tmp_path / "plain", progress=False)
    train_diffusion(cached, tmp_path / "first", progress=False)
    train_diffusion(cached, tmp_path / "second", progress=False)  # reads the cache
    assert len(list((tmp_path / "cache").glob("latents-*.safetensors"))) == 1
    runs = [load_checkpoint(tmp_path / run / "checkpoints" / "step-00000002")[0]["unet"]
            for run in ("plain", "first", "second")]
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]) and torch.equal(value, runs[2][key]), key
    other_data = replace(cached, data=replace(TINY.data, limit=32))
    train_diffusion(other_data, tmp_path / "other", progress=False)
    assert len(list((tmp_path / "cache").glob("latents-*.safetensors"))) == 2


def test_class_conditioned_run_on_shapes(tmp_path):
    unet = replace(TINY.model.net, context_dim=None, num_classes=49)
    config = replace(
        TINY,
        model=LatentDiffusionConfig(net=unet, conditioning="class"),
        autoencoder="models/autoencoders/fmnist-kl-f4",
        data=DiffusionDataConfig(dataset="shapes", limit=16),
        steps=2,
    )
    with pytest.raises(ValueError, match="shapes images have 3 channels but the autoencoder .* takes 1"):
        train_diffusion(config, tmp_path)  # RGB shapes through a grayscale autoencoder


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="text conditioning needs a UNet with cross-attention"):
        LatentDiffusionConfig(net=replace(TINY.model.net, context_dim=None))
    with pytest.raises(ValueError, match="class conditioning needs unet.num_classes"):
        LatentDiffusionConfig(net=TINY.model.net, conditioning="class")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        DiffusionDataConfig(dataset="cifar")
    with pytest.raises(ValueError, match="in_channels"):
        train_diffusion(replace(TINY, model=replace(TINY.model, net=replace(TINY.model.net, in_channels=3))),
                        "/tmp/never")


def test_super_resolution_run_trains_and_upscales(tmp_path):
    """The x4 preset, shrunk: the low-res image joins the latents, the noise level is the class
    label; the saved model upscales 8x8 to 32x32 and is measured against bicubic."""
    from ldmkit import Pipeline
    from ldmkit.apps.evaluate_tasks import evaluate_upscaling
    from ldmkit.nets import UNET_PRESETS

    preset = DIFFUSION_PRESETS["fashion-mnist-x4"]
    tiny_unet = replace(UNET_PRESETS["tiny-uncond"], in_channels=5, num_classes=351)
    config = replace(preset, model=replace(preset.model, net=tiny_unet), data=DiffusionDataConfig(limit=32),
                     steps=3, batch_size=4, warmup_steps=1, log_every=1, sample_every=3, checkpoint_every=3)
    train_diffusion(config, tmp_path, progress=False)
    pipe = Pipeline.from_pretrained(tmp_path / "model")
    assert (tmp_path / "samples" / "step_000003.png").is_file()
    [image] = pipe.upscale(torch.zeros(1, 8, 8) - 1, steps=2)
    assert image.size == (32, 32)
    with pytest.raises(ValueError, match="is an upscaler"):
        pipe.generate("", steps=2)
    result = evaluate_upscaling(pipe, per_class=1, steps=2)
    assert result["images"] == 10 and result["factor"] == 4 and result["bicubic_psnr_db"] > 10


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    """Steps 2 and 3 of 8 give a NaN loss: skipped and counted, weights untouched; a later
    streak of 3 (the limit) stops the run with the weights from before it saved."""
    import ldmkit.train.diffusion as trainer

    real_loss = trainer.diffusion_loss
    calls = []

    def sometimes_nan(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) in (2, 3) or len(calls) >= 6 else loss

    monkeypatch.setattr(trainer, "diffusion_loss", sometimes_nan)
    config = replace(TINY, steps=10, max_nonfinite_steps=3, log_every=1, checkpoint_every=5, sample_every=100)
    with pytest.raises(FloatingPointError, match="3 steps in a row had a non-finite loss"):
        train_diffusion(config, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_nonfinite"] for r in records] == [0, 1, 2, 2, 2, 3, 4]
    after_five, _, _ = load_checkpoint(tmp_path / "checkpoints" / "step-00000005")
    stopped, _, state = load_checkpoint(tmp_path / "checkpoints" / "step-00000008", with_train_state=True)
    assert state["skipped_nonfinite"] == 5
    for part in ("unet", "ema_unet"):  # steps 6-8 were skipped: the weights from before the streak
        assert all(torch.equal(value, stopped[part][key]) for key, value in after_five[part].items())


def test_bf16_autocast_trains(tmp_path):
    summary = train_diffusion(replace(TINY, mixed_precision="bf16"), tmp_path, progress=False)
    assert summary["steps"] == 4
    with pytest.raises(ValueError, match="fp16 mixed precision needs a GPU"):
        train_diffusion(replace(TINY, mixed_precision="fp16"), tmp_path / "fp16", progress=False)
    with pytest.raises(ValueError, match="mixed_precision must be"):
        replace(TINY, mixed_precision="fp8")


def test_a_run_on_a_folder_of_broken_and_odd_images_finishes(tmp_path, capsys):
    """Truncated, corrupt, tiny and odd-mode images and missing captions: converted or skipped
    before the first step, named in the summary, and the run completes."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"good{k}.png")
        (folder / f"good{k}.txt").write_text("a photo of a bag\n")
    Image.fromarray(rng.integers(0, 255, (36, 36), dtype=np.uint8)).convert("P").save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 255, (36, 36, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 65535, (36, 36), dtype=np.uint16)).save(folder / "deep.png")
    Image.new("RGB", (3, 3)).save(folder / "tiny.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (folder / "truncated.png").write_bytes((folder / "good0.png").read_bytes()[:150])
    config = replace(TINY, data=DiffusionDataConfig(dataset="folder", path=str(folder)), steps=2, sample_every=2)
    summary = train_diffusion(config, tmp_path / "run", progress=False)
    assert summary["steps"] == 2 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "7 images" in out and "3 skipped" in out and "3 without a caption" in out
    assert all(name in out for name in ("tiny.png", "corrupt.jpg", "truncated.png"))


def test_gradient_accumulation_and_checkpointing_take_the_same_steps(tmp_path):
    """Two micro-batches of 4 take the step one batch of 8 takes (the same samples, t and
    noise), up to float rounding; so does a run with gradient checkpointing."""
    train_diffusion(TINY, tmp_path / "one", progress=False)
    train_diffusion(replace(TINY, accumulate=2), tmp_path / "two", progress=False)
    train_diffusion(replace(TINY, gradient_checkpointing=True), tmp_path / "recomputed", progress=False)
    one, _, _ = load_checkpoint(tmp_path / "one" / "checkpoints" / "step-00000004")
    for run in ("two", "recomputed"):  # also: activations recomputed in backward change nothing
        other, _, _ = load_checkpoint(tmp_path / run / "checkpoints" / "step-00000004")
        for key, value in one["unet"].items():
            torch.testing.assert_close(other["unet"][key], value, rtol=0, atol=1e-6, msg=f"{run}: {key}")
    with pytest.raises(ValueError, match="do not split into accumulate=3"):
        train_diffusion(replace(TINY, accumulate=3), tmp_path / "three", progress=False)
