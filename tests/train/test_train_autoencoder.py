"""The first-stage training loop: a tiny run end to end, exact resume, bad input."""

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from ldmkit.apps.cli import main
from ldmkit.model import load_autoencoder
from ldmkit.storage import CheckpointError, load_checkpoint
from ldmkit.train.autoencoder import train_autoencoder
from ldmkit.train.autoencoder_config import TRAIN_PRESETS, DataConfig

TINY = TRAIN_PRESETS["tiny"]


def test_tiny_run_leaves_a_model_log_plot_and_grids(tmp_path):
    metrics = train_autoencoder(TINY, tmp_path, progress=False)
    assert set(metrics) >= {"psnr", "ssim", "scaling_factor"}
    model = load_autoencoder(tmp_path / "model")
    assert model.config.scaling_factor == pytest.approx(metrics["scaling_factor"])
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == TINY.steps
    for name in ("loss.png", "reconstructions.png", "metrics.json", "samples/step-00000002.png"):
        assert (tmp_path / name).is_file(), name
    # the scale factor makes the latents of training data unit-variance
    from ldmkit.data import load_fashion_mnist

    x, _ = load_fashion_mnist("train", limit=TINY.scale_images)
    assert model.to_latent(x).std().item() == pytest.approx(1.0, rel=1e-4)


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path):
    config = replace(TINY, loss=replace(TINY.loss, gan_weight=0.5, perceptual="disc_features"))
    train_autoencoder(config, tmp_path / "whole", progress=False)
    train_autoencoder(config, tmp_path / "split", progress=False, max_steps=2)
    train_autoencoder(config, tmp_path / "split", progress=False)
    whole, _, _ = load_checkpoint(tmp_path / "whole" / "checkpoints" / "step-00000004")
    split, _, _ = load_checkpoint(tmp_path / "split" / "checkpoints" / "step-00000004")
    for part in ("autoencoder", "discriminator"):
        for key, value in whole[part].items():
            assert torch.equal(value, split[part][key]), f"{part}.{key}"


def test_resume_refuses_a_changed_config(tmp_path):
    train_autoencoder(TINY, tmp_path, progress=False, max_steps=2)
    with pytest.raises(CheckpointError, match="another config"):
        train_autoencoder(replace(TINY, lr=1e-3), tmp_path, progress=False)
    if TINY.lr_schedule == "cosine":  # its learning rate depends on the length: not extendable
        with pytest.raises(CheckpointError, match="decays over its steps"):
            train_autoencoder(replace(TINY, steps=TINY.steps * 2), tmp_path, progress=False)


def test_bad_input_is_reported(tmp_path):
    with pytest.raises(ValueError, match="Fashion-MNIST is grayscale"):
        train_autoencoder(replace(TINY, model=replace(TINY.model, in_channels=3, out_channels=3)), tmp_path)
    with pytest.raises(ValueError, match="must equal model.in_channels"):
        replace(TINY, model=replace(TINY.model, out_channels=3))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_autoencoder(replace(TINY, data=DataConfig(dataset="folder", path=str(tmp_path / "none"))), tmp_path / "r")
    for i in range(3):
        Image.new("RGB", (30, 30), (i * 50, 0, 0)).save(tmp_path / f"odd{i}.png")
    with pytest.raises(ValueError, match="not divisible by the downsampling factor f = 2"):
        folder = DataConfig(dataset="folder", path=str(tmp_path), size=15)
        train_autoencoder(replace(TINY, data=folder, model=replace(TINY.model, in_channels=3, out_channels=3)),
                          tmp_path / "r2")
    assert not (tmp_path / "r2" / "checkpoints").exists()  # nothing half-written


def test_cli_trains_and_reports_bad_overrides(tmp_path, capsys):
    assert main(["train-autoencoder", "--preset", "tiny", "--out", str(tmp_path), "--set", "steps=2"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2
    assert main(["train-autoencoder", "--preset", "tiny", "--out", str(tmp_path / "x"), "--set", "model.depth=3"]) == 2
    assert "unknown config key 'model.depth'" in capsys.readouterr().err


def test_learning_rate_warms_up_then_follows_a_cosine_to_zero():
    from ldmkit.train.steps import learning_rate

    def lr(step, schedule="cosine"):
        return learning_rate(1.0, step, warmup=10, total=110, schedule=schedule)

    assert lr(0) == pytest.approx(0.1)
    assert lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.5)
    assert lr(110) == pytest.approx(0.0, abs=1e-12)
    assert lr(100, "constant") == 1.0


@pytest.mark.parametrize("kind", ["ae", "kl", "vq"])
def test_saved_autoencoder_round_trip_is_exact(tmp_path, kind):
    from ldmkit.autoencoders import AE_PRESETS, Autoencoder
    from ldmkit.model import save_autoencoder

    model = Autoencoder(replace(AE_PRESETS["tiny"], kind=kind, codebook_size=16, scaling_factor=0.7)).eval()
    save_autoencoder(model, tmp_path / "m")
    loaded = load_autoencoder(tmp_path / "m")
    assert loaded.config == model.config
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.to_latent(x), model.to_latent(x))
        assert torch.equal(loaded.from_latent(model.to_latent(x)), model.from_latent(model.to_latent(x)))


def test_decoder_only_fine_tuning_keeps_the_latent_space(tmp_path):
    train_autoencoder(TINY, tmp_path / "base", progress=False)
    tuned_cfg = replace(TINY, init_from=str(tmp_path / "base" / "model"), train_decoder_only=True,
                        loss=replace(TINY.loss, gan_weight=0.5, perceptual="disc_features"))
    train_autoencoder(tuned_cfg, tmp_path / "tuned", progress=False)
    base, tuned = load_autoencoder(tmp_path / "base" / "model"), load_autoencoder(tmp_path / "tuned" / "model")
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(tuned.to_latent(x), base.to_latent(x))  # same encoder, same scale
        assert not torch.allclose(tuned.decoder.conv_out.weight, base.decoder.conv_out.weight)
    with pytest.raises(ValueError, match="train_decoder_only needs init_from"):
        replace(TINY, train_decoder_only=True)
    other = replace(TINY, model=replace(TINY.model, base_channels=8), init_from=str(tmp_path / "base" / "model"))
    with pytest.raises(ValueError, match="another model config"):
        train_autoencoder(other, tmp_path / "other", progress=False)


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    """Steps 2 and 3 give a NaN reconstruction loss: skipped and counted, the weights untouched;
    a later streak of 3 (the limit) stops the run, saving the weights from before it."""
    import ldmkit.train.autoencoder as trainer

    real_loss, calls = trainer.reconstruction_loss, []

    def sometimes_nan(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) in (2, 3) or len(calls) >= 6 else loss

    monkeypatch.setattr(trainer, "reconstruction_loss", sometimes_nan)
    config = replace(TINY, steps=10, max_nonfinite_steps=3, checkpoint_every=5, image_every=100)
    with pytest.raises(FloatingPointError, match="3 steps in a row had a non-finite loss"):
        train_autoencoder(config, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_nonfinite"] for r in records] == [0, 1, 2, 2, 2, 3, 4]
    after_five, _, _ = load_checkpoint(tmp_path / "checkpoints" / "step-00000005")
    stopped, _, state = load_checkpoint(tmp_path / "checkpoints" / "step-00000008", with_train_state=True)
    assert state["skipped_nonfinite"] == 5
    assert all(torch.equal(value, stopped["autoencoder"][key]) for key, value in after_five["autoencoder"].items())


def test_bf16_autocast_trains_and_fp16_wants_a_gpu(tmp_path):
    metrics = train_autoencoder(replace(TINY, mixed_precision="bf16"), tmp_path, progress=False)
    assert metrics["psnr"] > 0
    with pytest.raises(ValueError, match="fp16 mixed precision needs a GPU"):
        train_autoencoder(replace(TINY, mixed_precision="fp16"), tmp_path / "fp16", progress=False)
