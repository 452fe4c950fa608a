"""GLIDE in pixel space, tiny: the identity first stage, a text model trained, saved, loaded and
sampled with guidance, an overfit run, and the text-conditioned x2 upsampler chained after it."""

import dataclasses
import json

import pytest
import torch

from ldmkit import Pipeline
from ldmkit.autoencoders import Autoencoder, AutoencoderConfig, PixelSpace, make_first_stage, pixel_space
from ldmkit.diffusion import diffusion_loss, make_schedule
from ldmkit.family import CascadeGenerator, save_cascade
from ldmkit.model import LowResConfig
from ldmkit.nets import UNet
from ldmkit.train.diffusion import train_diffusion
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS, TINY_GLIDE_UNET, DiffusionDataConfig
from ldmkit.utils.images import from_pil

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY_GLIDE = dataclasses.replace(DIFFUSION_PRESETS["tiny-glide"], steps=2, checkpoint_every=2, guidance=1.0)


def test_the_pixel_first_stage_is_the_identity():
    first_stage = pixel_space(3)
    x = torch.rand(2, 3, 8, 12) * 2 - 1
    assert torch.equal(first_stage.to_latent(x), x) and torch.equal(first_stage.from_latent(x), x)
    assert (first_stage.config.downsampling_factor, first_stage.config.z_channels) == (1, 3)
    assert next(first_stage.parameters()).dtype == torch.float32  # callers read the dtype there
    with pytest.raises(ValueError, match=r"pixel-space image batch of shape \(B, 3, H, W\)"):
        first_stage.to_latent(torch.zeros(2, 1, 8, 8))
    pixel = AutoencoderConfig(kind="pixel", in_channels=1)
    assert isinstance(make_first_stage(pixel), PixelSpace)
    with pytest.raises(ValueError, match="is the identity, not an autoencoder"):
        Autoencoder(pixel)


@pytest.fixture(scope="module")
def glide_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("glide")
    train_diffusion(TINY_GLIDE, run, progress=False)
    return run


def test_a_tiny_glide_run_saves_a_pixel_model_that_generates(glide_run):
    pipe = Pipeline.from_pretrained(glide_run / "model")
    assert pipe.autoencoder.config.kind == "pixel" and pipe.latent_shape == (1, 8, 8)
    cond = pipe.encode_prompts(["a photo of a bag", ""])
    assert cond["pooled"].shape == (2, 384) and not torch.equal(cond["pooled"][0], cond["pooled"][1])
    images = pipe.generate(["a photo of a bag", "a photo of a shirt"], num_images=2, steps=3, guidance=3.0,
                           output="tensor")
    assert images.shape == (4, 1, 8, 8) and images.abs().max() <= 1
    # the "latents" are the images: decoding is the identity up to the clamp to [-1, 1]
    z0 = pipe.generate("a photo of a bag", steps=3, output="latent")
    torch.testing.assert_close(pipe.generate("a photo of a bag", steps=3, output="tensor"), z0.clamp(-1, 1))
    [variation] = pipe.img2img(images[0], "a photo of a shirt", strength=0.5, steps=4)
    assert variation.size == (8, 8)


def test_a_pixel_model_samples_with_its_x0_estimate_clipped_to_the_images_range(glide_run):
    """DDPM / ADM / GLIDE's clip_denoised: unclipped, the eps estimate divided by sqrt(alpha_bar) ~ 0
    at the first timesteps threw x0_hat far outside [-1, 1], and the trained GLIDE's samples were
    saturated speckle. A latent model's x0 is not clipped."""
    from ldmkit.pipelines.core import pixel_x0_clip

    pipe = Pipeline.from_pretrained(glide_run / "model")
    seen = []
    pipe.generate("a photo of a bag", num_images=2, steps=4, guidance=3.0, output="latent",
                  hook=lambda step: seen.append(step.x0.abs().max().item()))
    assert len(seen) == 4 and max(seen) <= 1.0
    wild = lambda x_t, t: 50 * x_t  # an x0 estimate far out of range
    x = torch.ones(1, 1, 8, 8)
    assert pixel_x0_clip(pipe)(wild)(x, 999.0).abs().max() == 1.0
    shifted = pixel_x0_clip(pipe, lambda denoise: (lambda x_t, t: denoise(x_t, t) - 100))(wild)
    assert shifted(x, 999.0).max() == -1.0  # the clip comes after any other wrapper
    latent = Pipeline.from_pretrained("fashion-mnist-f4")
    marker = lambda denoise: denoise
    assert pixel_x0_clip(latent) is None and pixel_x0_clip(latent, marker) is marker


def test_cli_generates_with_a_glide_model(glide_run, tmp_path):
    from ldmkit.apps.cli import main

    main(["generate", "a photo of a sneaker", "--model", str(glide_run / "model"), "--steps", "2",
          "--num-images", "2", "--out", str(tmp_path)])
    assert len(list(tmp_path.glob("0000*_seed*.png"))) == 2


def test_a_tiny_glide_net_overfits_four_captioned_images():
    """Loss on fixed (t, eps) draws falls to well below its start after 60 steps on 4 images."""
    torch.manual_seed(0)
    net = UNet(TINY_GLIDE_UNET)
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    cond = {"context": torch.randn(4, 6, 384), "context_mask": torch.ones(4, 6, dtype=torch.bool),
            "pooled": torch.randn(4, 384)}
    sched = make_schedule(TINY_GLIDE.model.schedule)
    model = lambda x, t: net(x, t, **cond)

    def held_loss() -> float:
        with torch.no_grad():
            draws = [torch.Generator().manual_seed(seed) for seed in range(100, 104)]
            return sum(diffusion_loss(model, images, sched, "eps", gen=g).item() for g in draws) / len(draws)

    before = held_loss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(60):
        opt.zero_grad()
        diffusion_loss(model, images, sched, "eps", gen=torch.Generator().manual_seed(step)).backward()
        opt.step()
    assert held_loss() < 0.5 * before


def test_the_x2_upsampler_preset_runs_end_to_end_and_chains_after_the_base(glide_run, tmp_path):
    """The x2 preset with the tiny net, at 16x16 to follow the tiny base's 8x8."""
    preset = DIFFUSION_PRESETS["fashion-mnist-glide-x2"]
    tiny_net = dataclasses.replace(TINY_GLIDE_UNET, in_channels=2, num_classes=351)
    config = dataclasses.replace(preset, model=dataclasses.replace(preset.model, net=tiny_net, image_size=16),
                                 data=DiffusionDataConfig(limit=32), steps=2, batch_size=4, warmup_steps=1,
                                 log_every=1, sample_every=2, checkpoint_every=2)
    train_diffusion(config, tmp_path, progress=False)
    assert (tmp_path / "samples" / "step_000002.png").is_file()
    upsampler = Pipeline.from_pretrained(tmp_path / "model")
    assert upsampler.config.lowres.factor(upsampler.autoencoder.config.downsampling_factor) == 2
    [large] = upsampler.upscale(torch.zeros(1, 8, 8) - 1, "a photo of a bag", steps=2, guidance=2.0)
    assert large.size == (16, 16)
    base = Pipeline.from_pretrained(glide_run / "model")
    images = base.cascade(upsampler, ["a photo of a bag", "a photo of a shirt"], num_images=2, steps=2,
                          upsampler_steps=2)
    assert [im.size for im in images] == [(16, 16)] * 4
    with pytest.raises(ValueError, match="is an upscaler"):
        upsampler.generate("a photo of a bag", steps=2)
    with pytest.raises(ValueError, match="is not an upscaler"):
        upsampler.cascade(base, "a photo of a bag")

    # a cascade folder: the two as one generator, its defaults recorded, seeded as the call above
    folder = save_cascade(tmp_path / "cascade", glide_run / "model", tmp_path / "model",
                          sampling={"steps": 2, "upsampler_steps": 2})
    cascade = Pipeline.from_pretrained(folder)
    assert isinstance(cascade, CascadeGenerator) and cascade.settings_used({})["upsampler_steps"] == 2
    # its training: the two stages' records summed (what the family table reports)
    records = [json.loads((stage / "config.json").read_text())["training"]
               for stage in (glide_run / "model", tmp_path / "model")]
    assert cascade.meta["training"] == {"steps": {"base": 2, "upsampler": 2},
                                        "train_minutes": round(sum(r["train_minutes"] for r in records), 2)}
    again = cascade.generate(["a photo of a bag", "a photo of a shirt"], num_images=2, output="tensor")
    assert again.shape == (4, 1, 16, 16)
    assert torch.allclose(again, torch.stack([from_pil(im, 1) for im in images]), atol=2 / 255)
    with pytest.raises(ValueError, match="upscales the base's images"):
        save_cascade(tmp_path / "wrong", glide_run / "model", glide_run / "model")

    # each stage's sampler: the folder's default, else the model's own; the cascade call takes both
    stochastic = save_cascade(tmp_path / "ancestral", glide_run / "model", tmp_path / "model",
                              sampling={"steps": 2, "upsampler_steps": 2, "upsampler_sampler": "euler_a"})
    ancestral = Pipeline.from_pretrained(stochastic)
    used = ancestral.settings_used({})
    assert (used["sampler"], used["upsampler_sampler"]) == (base.defaults.sampler, "euler_a")
    by_folder = ancestral.generate("a photo of a bag", num_images=2, output="tensor")
    by_call = base.cascade(upsampler, "a photo of a bag", num_images=2, steps=2, upsampler_steps=2,
                           upsampler_sampler="euler_a", output="tensor")
    torch.testing.assert_close(by_folder, by_call)
    assert not torch.allclose(by_folder, again[:2])  # not the default sampler's images
    with pytest.raises(ValueError, match="unknown sampler"):
        base.cascade(upsampler, "a photo of a bag", steps=2, upsampler_steps=2, upsampler_sampler="nope")

    # the upsampler takes the base's images in one batch, each as `upscale` makes it alone:
    # its prompt, its seed (noise from its own generator, also under an ancestral sampler)
    small = base.generate(["a photo of a bag", "a photo of a shirt"], num_images=2, steps=2, output="tensor")
    alone = torch.cat([upsampler.upscale(image, prompt, seed=k, steps=2, sampler="euler_a", output="tensor")
                       for image, (prompt, k) in zip(small, [("a photo of a bag", 0), ("a photo of a bag", 1),
                                                             ("a photo of a shirt", 0), ("a photo of a shirt", 1)])])
    batched = base.cascade(upsampler, ["a photo of a bag", "a photo of a shirt"], num_images=2, steps=2,
                           upsampler_steps=2, upsampler_sampler="euler_a", output="tensor")
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_an_upscale_factor_must_be_a_multiple_of_the_first_stage_factor():
    with pytest.raises(ValueError, match="upscale_factor must be a whole number >= 2"):
        LowResConfig(upscale_factor=1)
    assert LowResConfig().factor(4) == 4 and LowResConfig(upscale_factor=2).enlargement(1) == 2
    with pytest.raises(ValueError, match="not a multiple of the first stage's factor 4"):
        LowResConfig(upscale_factor=2).enlargement(4)
