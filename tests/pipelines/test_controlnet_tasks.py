"""ControlNet through the Pipeline on the shipped shapes model: a fresh ControlNet changes no image
bit for bit (txt2img, img2img, inpainting), nor does scale 0; guess mode is its per-block scales
on the conditional half; several ControlNets sum; hints of another size are resized; bad inputs
are named; the PNG text records the control."""

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit import Pipeline
from ldmkit.apps.generate import generate_to_folder
from ldmkit.nets.controlnet import ControlNet
from ldmkit.pipelines.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a red circle in the top left"
HINT_WIDTHS = (16, 32, 64)  # two stride-2 steps: the shapes model's autoencoder is f = 4
RUN = dict(steps=4, seed=3, output="latent")


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained("shapes")


def trained(pipe, seed: int) -> ControlNet:
    """A ControlNet with every weight moved off its init, as if trained."""
    net = ControlNet.from_unet(pipe.net, hint_widths=HINT_WIDTHS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    net.name = f"trained-{seed}"
    return net


def hint(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture
def fresh(pipe):
    pipe.unload_controlnets()
    yield pipe
    pipe.unload_controlnets()


def test_a_fresh_controlnet_changes_nothing_bit_for_bit(fresh, pipe):
    image = pipe.generate("a blue square in the bottom right", steps=4, seed=1)[0]
    mask = Image.fromarray(np.pad(np.full((16, 16), 255, np.uint8), 8))
    plain = [pipe.generate(PROMPT, **RUN), pipe.img2img(image, PROMPT, strength=0.7, **RUN),
             pipe.inpaint(image, mask, PROMPT, **RUN)]
    pipe.load_controlnet(ControlNet.from_unet(pipe.net, hint_widths=HINT_WIDTHS))
    controlled = [pipe.generate(PROMPT, control_image=hint(), **RUN),
                  pipe.img2img(image, PROMPT, strength=0.7, control_image=hint(), **RUN),
                  pipe.inpaint(image, mask, PROMPT, control_image=hint(), **RUN)]
    assert all(torch.equal(a, b) for a, b in zip(plain, controlled))


def test_scale_zero_is_the_base_and_a_trained_controlnet_steers(fresh, pipe):
    plain = pipe.generate(PROMPT, **RUN)
    pipe.load_controlnet(trained(pipe, 1))
    assert torch.equal(pipe.generate(PROMPT, control_image=hint(), control_scale=0.0, **RUN), plain)
    steered = pipe.generate(PROMPT, control_image=hint(), **RUN)
    assert (steered - plain).abs().max() > 1e-2
    # a window of no step at all is the base too; an image of another size is resized (Lanczos)
    assert torch.equal(pipe.generate(PROMPT, control_image=hint(), control_start=0.0, control_end=0.2, **RUN), plain)
    resized = hint(size=20).resize((32, 32), Image.LANCZOS)
    assert torch.equal(pipe.generate(PROMPT, control_image=hint(size=20), **RUN),
                       pipe.generate(PROMPT, control_image=resized, **RUN))


def test_guess_mode_is_logspace_block_scales_on_the_conditional_half(fresh, pipe):
    net = pipe.load_controlnet(trained(pipe, 2))
    n = len(net.controlnet_down_blocks) + 1
    ramp = torch.logspace(-1, 0, n).tolist()
    no_guidance = dict(RUN, guidance=1.0)  # one half only: guess mode is then its scales
    assert torch.equal(pipe.generate(PROMPT, control_image=hint(), control_guess_mode=True, **no_guidance),
                       pipe.generate(PROMPT, control_image=hint(), control_scale=ramp, **no_guidance))
    guided = pipe.generate(PROMPT, control_image=hint(), control_scale=ramp, **RUN)  # both halves steered
    guessed = pipe.generate(PROMPT, control_image=hint(), control_guess_mode=True, **RUN)
    assert (guided - guessed).abs().max() > 1e-4


def test_several_controlnets_sum(fresh, pipe):
    pipe.load_controlnet(trained(pipe, 1))
    alone = pipe.generate(PROMPT, control_image=hint(0), control_scale=0.7, **RUN)
    pipe.load_controlnet(trained(pipe, 2))
    assert torch.equal(pipe.generate(PROMPT, control_image=[hint(0), hint(1)], control_scale=[0.7, 0.0], **RUN), alone)
    both = pipe.generate(PROMPT, control_image=[hint(0), hint(1)], control_scale=[0.7, 0.5], **RUN)
    assert (both - alone).abs().max() > 1e-3


def test_bad_control_inputs_are_named(fresh, pipe):
    with pytest.raises(ValueError, match="no ControlNet is loaded"):
        pipe.generate(PROMPT, control_image=hint(), **RUN)
    pipe.load_controlnet(trained(pipe, 1))
    with pytest.raises(ValueError, match=r"control_image: give one value or one per ControlNet \(1 loaded\), got 2"):
        pipe.generate(PROMPT, control_image=[hint(), hint()], **RUN)
    with pytest.raises(ValueError, match="control image has 4 channels but the ControlNet 'trained-1' takes 3"):
        pipe.generate(PROMPT, control_image=torch.rand(4, 32, 32), **RUN)
    with pytest.raises(ValueError, match="0 <= start < end <= 1"):
        pipe.generate(PROMPT, control_image=hint(), control_start=0.5, control_end=0.5, **RUN)
    pipe.unload_controlnets()
    pipe.load_controlnet(ControlNet.from_unet(pipe.net))  # SD's 8x hint encoder on an f = 4 model
    with pytest.raises(ValueError, match="encodes its hint 8x down but the autoencoder's latents are 4x smaller"):
        pipe.generate(PROMPT, control_image=hint(), **RUN)


def test_the_png_text_records_the_control(fresh, pipe, tmp_path):
    pipe.load_controlnet(trained(pipe, 1))
    hint().save(tmp_path / "edges.png")
    paths = generate_to_folder(GenerationRequest(prompt=PROMPT, steps=2), tmp_path / "out", pipeline=pipe,
                               control={"control_image": str(tmp_path / "edges.png"), "control_scale": 0.6})
    text = Image.open(paths[0]).text
    assert text["controlnet"] == "trained-1" and text["control_scale"] == "0.6"
    assert text["control_image"] == str(tmp_path / "edges.png")
    assert "controlnet: trained-1" in text["parameters"] and "control_scale: 0.6" in text["parameters"]


def test_the_shipped_shapes_control_puts_the_shape_where_the_outline_is():
    from ldmkit.data.fill_shapes import fill_obedience
    from ldmkit.train.controlnet_hints import fill_shapes_hints, generate_from_hints

    pipe = Pipeline.from_pretrained("shapes")
    pipe.load_controlnet("shapes-control")  # by its shipped name
    held = fill_shapes_hints([("red", "circle", "bottom right"), ("blue", "square", "top right"),
                              ("green", "triangle", "bottom left")])  # the base alone draws top left
    scores = fill_obedience(generate_from_hints(pipe, held, steps=10), held.targets, held.combos)
    assert scores["quadrant"] == 1.0 and scores["iou"] > 0.7
