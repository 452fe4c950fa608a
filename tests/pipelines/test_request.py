"""The one generation-request type (JSON round trip, unknown keys refused, what the PNG text
records), `run` equal to the task functions it dispatches to, and the per-step hook through
every task: indices, x_t and x0 at each step, previews, and a cancel that writes nothing."""

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit import Pipeline
from ldmkit.apps.generate import generate_to_folder
from ldmkit.pipelines import Cancelled, Step
from ldmkit.pipelines.request import GenerationRequest, run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained("fashion-mnist-f4")


@pytest.fixture(scope="module")
def image_and_mask():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    return image, Image.fromarray(mask)


def test_json_round_trip_and_unknown_keys():
    request = GenerationRequest(prompt="a photo of a bag", task="inpaint", strength=0.7, resample=1, seed=3)
    assert GenerationRequest.from_json(request.to_json()) == request
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['cfg_scale'\]"):
        GenerationRequest.from_json({"prompt": "x", "cfg_scale": 7})
    with pytest.raises(ValueError, match="the txt2img task takes no \\['strength'\\]"):
        GenerationRequest(strength=0.5)
    with pytest.raises(ValueError, match="unknown task"):
        GenerationRequest(task="video")


def test_png_text_records_the_resolved_settings_and_what_differs_from_the_defaults(pipe):
    plain = GenerationRequest(prompt="a photo of a bag").resolved(pipe)
    assert plain.png_text() == {"prompt": "a photo of a bag", "negative_prompt": "", "sampler": "dpmpp_2m",
                                "steps": 20, "guidance": 3.0}
    img2img = GenerationRequest(prompt="a photo of a bag", task="img2img", guidance_rescale=0.5).resolved(pipe)
    assert img2img.png_text() == {"task": "img2img", "prompt": "a photo of a bag", "negative_prompt": "",
                                  "sampler": "dpmpp_2m", "steps": 20, "guidance": 3.0, "guidance_rescale": 0.5,
                                  "strength": 0.6}


def test_run_equals_the_task_functions(pipe, image_and_mask):
    image, mask = image_and_mask
    cases = [
        (GenerationRequest(prompt="a photo of a bag", num_images=2, steps=3, seed=4),
         lambda: pipe.generate("a photo of a bag", num_images=2, steps=3, seed=4, output="latent")),
        (GenerationRequest(prompt="a photo of a bag", task="img2img", steps=4, strength=0.5, seed=1),
         lambda: pipe.img2img(image, "a photo of a bag", strength=0.5, steps=4, seed=1, output="latent")),
        (GenerationRequest(prompt="a photo of a bag", task="inpaint", steps=3, seed=2),
         lambda: pipe.inpaint(image, mask, "a photo of a bag", steps=3, seed=2, output="latent")),
    ]
    for request, direct in cases:
        assert torch.equal(run(pipe, request, image=image, mask=mask, output="latent"), direct())


@pytest.mark.parametrize("task", ["txt2img", "img2img", "inpaint", "outpaint"])
def test_the_step_hook_sees_every_step_of_every_task(pipe, image_and_mask, task):
    image, mask = image_and_mask
    extra = {"img2img": {"strength": 1.0}, "outpaint": {"right": 8}}.get(task, {})
    request = GenerationRequest(prompt="a photo of a bag", task=task, steps=5, **extra)
    steps: list[Step] = []
    final = run(pipe, request, image=image if task != "outpaint" else image.crop((0, 0, 24, 32)), mask=mask,
                output="latent", hook=steps.append)
    assert [s.index for s in steps] == list(range(5)) and {s.total for s in steps} == {5}
    assert torch.equal(steps[-1].x_t, final)  # the last step's sample is the result
    assert all(s.x0.shape == final.shape for s in steps)
    previews = pipe.decode(steps[2].x0)  # a preview of the estimate midway
    assert previews.shape == (1, 1, 32, 32 if task != "outpaint" else 32)


def test_the_upscaler_hook_and_a_cancel_that_writes_nothing(tmp_path, pipe):
    upscaler = Pipeline.from_pretrained("fashion-mnist-x4")
    steps = []
    upscaler.upscale(torch.zeros(1, 8, 8) - 1, steps=3, hook=steps.append)
    assert [s.index for s in steps] == [0, 1, 2]

    def cancel_at_two(step: Step) -> None:
        if step.index == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        generate_to_folder("a photo of a bag", tmp_path / "out", num_images=2, steps=6, pipeline=pipe,
                           hook=cancel_at_two)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
