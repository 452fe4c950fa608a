"""Training a 9-channel inpainting model: its random masks, the start from a text-to-image
model (widened conv_in, zero new channels), a tiny run whose model inpaints, bad configs."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit import Pipeline
from ldmkit.nets import UNet
from ldmkit.train.diffusion import start_from, train_diffusion
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS, DiffusionDataConfig
from ldmkit.train.masks import random_masks

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = DIFFUSION_PRESETS["tiny"]
# fmnist-kl-f4: 4 latent channels
NINE = replace(TINY.model, net=replace(TINY.model.net, in_channels=9), task="inpainting")


def test_random_masks_mix_whole_half_and_boxes():
    masks = random_masks(400, (32, 32), torch.Generator().manual_seed(0))
    assert masks.shape == (400, 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    covered = masks.mean(dim=(1, 2, 3))
    assert 0.18 < (covered == 1).float().mean() < 0.32  # a quarter masks everything
    assert 0.18 < (covered == 0.5).float().mean() < 0.32  # a quarter masks one half
    assert covered.min() >= 0.25 * 0.25 * 0.9  # the smallest box: a quarter of each side
    again = random_masks(400, (32, 32), torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny text-to-image model (4 steps), the start of the inpainting runs."""
    run = tmp_path_factory.mktemp("base")
    train_diffusion(TINY, run, progress=False)
    return run / "model"


def test_widened_start_behaves_as_the_text_to_image_model(base_model):
    base = Pipeline.from_pretrained(base_model).unet
    nine = UNet(NINE.net)
    start_from(nine, str(base_model))
    x, concat = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8, 8)
    context = torch.randn(2, 3, 384)
    with torch.no_grad():
        expected = base(x, torch.tensor([10, 900]), context=context)
        got = nine(torch.cat([x, concat], dim=1), torch.tensor([10, 900]), context=context)
    assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"init_from .*: [a-z_.0-9]+ has shape \(\d+, \d+.*this UNet.s"):
        start_from(UNet(replace(NINE.net, base_channels=NINE.net.base_channels * 2)), str(base_model))


def test_tiny_inpainting_run_makes_a_model_that_inpaints(base_model, tmp_path):
    config = replace(TINY, model=NINE, init_from=str(base_model), autoencoder="models/autoencoders/fmnist-kl-f4",
                     steps=3, sample_every=3, checkpoint_every=3)
    train_diffusion(config, tmp_path, progress=False)
    assert (tmp_path / "samples" / "step_000003.png").is_file()  # masked / completed / original rows
    pipe = Pipeline.from_pretrained(tmp_path / "model")
    assert pipe.inpainting
    seen = []
    pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    [result] = pipe.inpaint(image, Image.fromarray(mask), "a photo of a bag", steps=2)
    assert set(seen) == {9}
    assert np.array_equal(np.asarray(result)[:, :16], np.asarray(image)[:, :16])
    with pytest.raises(ValueError, match="inpainting model"):
        pipe.generate("a photo of a bag", steps=2)


def test_unet_channels_that_fit_no_task_are_refused(tmp_path):
    config = replace(TINY, model=replace(TINY.model, net=replace(TINY.model.net, in_channels=7)),
                     data=DiffusionDataConfig(limit=8))
    with pytest.raises(ValueError, match=r"must be 4 \(text-to-image\) or 9 \(inpainting"):
        train_diffusion(config, tmp_path, progress=False)
