"""Distilled tiny decoders: the distillation learns its teacher's decode, resumes exactly; models
find theirs, preview and decode with it, and refuse a missing or mismatched one clearly."""

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ldmkit.autoencoders import Autoencoder, AutoencoderConfig
from ldmkit.autoencoders.tiny import TinyAutoencoder, TinyAutoencoderConfig
from ldmkit.io.taesd_files import load_tiny_autoencoder, save_tiny_autoencoder
from ldmkit.metrics import psnr
from ldmkit.model import save_autoencoder
from ldmkit.pipelines.tiny_decoder import (
    SHIPPED,
    check_tiny_decoder,
    decoder_fingerprint,
    find_tiny_decoder,
    load_tiny_decoder,
    tiny_decode,
)
from ldmkit.train.tiny_decoder import distill_tiny_decoder, load_teacher
from ldmkit.train.tiny_decoder_config import TINY_DECODER_PRESETS, tiny_architecture
from tests.resume_checks import assert_resume_is_exact

TINY = TINY_DECODER_PRESETS["tiny"]
# dB against a random teacher's decode (busy, hard to match) on the 4 training images it saw: ~9 at
# the start, ~20 after 100 steps
OVERFIT_PSNR = 18.0


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory) -> Path:
    """A small random KL f4 first stage on Fashion-MNIST: a teacher with a non-trivial decoder."""
    torch.manual_seed(0)
    config = AutoencoderConfig(in_channels=1, out_channels=1, base_channels=8, channel_mult=(1, 2, 2),
                               latent_channels=4, norm_groups=4, mid_attention=False, scaling_factor=0.5)
    folder = tmp_path_factory.mktemp("teacher") / "ae"
    save_autoencoder(Autoencoder(config), folder, extra={"dataset": "fashion-mnist"})
    return folder


def test_architecture_has_one_upsampling_per_factor_of_two():
    for f, stages in ((2, 2), (4, 3), (8, 4)):
        arch = tiny_architecture(TINY, f, 3, 4)
        assert arch.upsampling_factor == f and arch.downsampling_factor == f
        assert len(arch.decoder_block_out_channels) == stages and arch.latent_channels == 4
    with pytest.raises(ValueError, match="power-of-two"):
        tiny_architecture(TINY, 3, 1, 4)


def test_distillation_overfits_a_few_images(teacher_folder, tmp_path, one_thread):
    config = replace(TINY, model=str(teacher_folder), data_limit=4, steps=100, batch_size=4, noisy_fraction=0.0,
                     width=16, lr=1e-2, l1_weight=0.0, checkpoint_every=100, log_every=1)
    metrics = distill_tiny_decoder(config, tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["mse"] < log[0]["mse"] / 3
    teacher, _ = load_teacher(str(teacher_folder))
    tiny = load_tiny_autoencoder(tmp_path / "model")
    from ldmkit.data import load_fashion_mnist

    x, _ = load_fashion_mnist("train", pad_to=32, limit=4)
    with torch.no_grad():
        z0 = teacher.to_latent(x)
        assert psnr(tiny.decode(z0).clamp(-1, 1), teacher.from_latent(z0).clamp(-1, 1)).min() > OVERFIT_PSNR
    assert metrics["tiny_decode_images_per_s"] > 0 and metrics["cpu"]
    written = json.loads((tmp_path / "model" / "config.json").read_text())
    assert written["teacher"]["fingerprint"] == decoder_fingerprint(teacher)


def test_resume_is_exact(teacher_folder, tmp_path, one_thread):
    config = replace(TINY, model=str(teacher_folder), steps=4, checkpoint_every=2)
    distill_tiny_decoder(config, tmp_path / "whole", progress=False)
    assert_resume_is_exact(distill_tiny_decoder, config, tmp_path / "whole", tmp_path / "run",
                           timing=("images_per_s",))


def _trained_pair(teacher_folder, tmp_path) -> Path:
    config = replace(TINY, model=str(teacher_folder), steps=4, checkpoint_every=4)
    distill_tiny_decoder(config, tmp_path, progress=False)
    return tmp_path / "model"


class FakePipe:
    """What the preview and the final decode read of a Pipeline."""

    def __init__(self, autoencoder, meta):
        from ldmkit.pipelines.fast import FastPath
        from ldmkit.pipelines.pipeline import Pipeline

        self.autoencoder, self.meta, self.name = autoencoder, meta, "fake"
        self.tiny_decoder_on, self._tiny_decoder, self.fast_path = False, None, FastPath()
        self.tiny_decoder = lambda path=None: Pipeline.tiny_decoder(self, path)
        self.use_tiny_decoder = lambda on=True, path=None: Pipeline.use_tiny_decoder(self, on, path)


def test_preview_uses_the_tiny_decoder_when_present(teacher_folder, tmp_path):
    from ldmkit.apps.server.preview import previewer

    tiny_folder = _trained_pair(teacher_folder, tmp_path)
    teacher, _ = load_teacher(str(teacher_folder))
    z0 = torch.randn(2, 4, 8, 8)
    with_tiny = previewer(FakePipe(teacher, {"tiny_decoder": str(tiny_folder)}))(z0, 2)
    expected = tiny_decode(load_tiny_autoencoder(tiny_folder), z0[:1])[0, 0]
    assert with_tiny.size == (64, 64) and with_tiny.mode == "L"
    pixels = torch.tensor(list(with_tiny.getdata()), dtype=torch.float32).view(64, 64)[::2, ::2] / 127.5 - 1
    assert (pixels - expected).abs().max() < 2 / 255 + 1e-6  # the tiny decode, enlarged, in [-1, 1]
    linear = previewer(FakePipe(teacher, {}))(z0, 2)  # no tiny decoder: the linear map, same size
    assert linear.size == (64, 64)


def test_shipped_model_decodes_close_to_the_full_decoder():
    """The shipped fashion-mnist model finds its shipped tiny decoder by fingerprint; --tiny-decoder's
    images are close to the full decoder's (the measured PSNR is in docs/autoencoders.md)."""
    from ldmkit import Pipeline
    from ldmkit.pipelines.request import GenerationRequest, run

    pipe = Pipeline.from_pretrained("fashion-mnist-f4")
    assert find_tiny_decoder(pipe.autoencoder, pipe.meta) is not None
    z0 = pipe.generate("a sneaker", steps=4, seed=0, num_images=2, output="latent")
    full = pipe.decode(z0)
    fast = run(pipe, GenerationRequest(prompt="a sneaker", steps=4, num_images=2, tiny_decoder=True),
               output="tensor")
    assert fast.shape == full.shape and psnr(fast, full).min() > 20
    assert not pipe.tiny_decoder_on  # the request's setting ends with it
    assert GenerationRequest(tiny_decoder=True).png_text()["tiny_decoder"] is True


def test_a_model_without_a_tiny_decoder_is_refused(teacher_folder):
    from ldmkit.pipelines.request import tiny_decoder_applied

    teacher, _ = load_teacher(str(teacher_folder))
    pipe = FakePipe(teacher, {})
    with pytest.raises(ValueError, match="has no tiny decoder.*distill-tiny-decoder"):
        pipe.use_tiny_decoder()
    with pytest.raises(ValueError, match="has no tiny decoder"), tiny_decoder_applied(pipe, True):
        pass
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(1e-3)
    assert decoder_fingerprint(other) != decoder_fingerprint(teacher)  # a changed decoder matches nothing


def test_mismatched_latent_channels_are_refused(teacher_folder, tmp_path):
    teacher, _ = load_teacher(str(teacher_folder))
    wrong = TinyAutoencoder(TinyAutoencoderConfig(in_channels=1, out_channels=1, latent_channels=3,
                                                  encoder_block_out_channels=(8, 8, 8), num_encoder_blocks=(1, 1, 1),
                                                  decoder_block_out_channels=(8, 8, 8), num_decoder_blocks=(1, 1, 1)))
    with pytest.raises(ValueError, match="3-channel latents.*4-channel latents"):
        check_tiny_decoder(wrong, teacher, "wrong")
    save_tiny_autoencoder(wrong, tmp_path / "wrong")
    with pytest.raises(ValueError, match="3-channel latents"):
        load_tiny_decoder(teacher, {"tiny_decoder": str(tmp_path / "wrong")})


def test_a_tiny_decoder_folder_can_be_named():
    """use_tiny_decoder(path=...) takes a tiny autoencoder from anywhere (TAESD for SD, say), and
    still refuses one made for other latents."""
    from ldmkit.pipelines import Pipeline

    pipe = Pipeline.from_pretrained("shapes")
    shipped = SHIPPED / "shapes-kl-f4-tiny-decoder"
    assert pipe.use_tiny_decoder(path=shipped).tiny_decoder_on
    images = pipe.generate("a red circle in the top left", steps=2, output="tensor", seed=0)
    assert images.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="decodes 4-channel latents 2x to 1-channel images"):
        pipe.use_tiny_decoder(path=SHIPPED / "fmnist-kl-f2-tiny-decoder")
