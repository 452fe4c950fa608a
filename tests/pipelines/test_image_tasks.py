"""img2img, inpainting and outpainting on the shipped shapes model and on a tiny SD inpainting
model: what strength does, pixels outside the mask kept bit for bit, the command line, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit import Pipeline
from ldmkit.apps.cli import main
from ldmkit.pipelines import partial_timesteps
from ldmkit.utils.images import read_png_metadata

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a red circle in the top left"


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained("shapes")


@pytest.fixture(scope="module")
def picture(pipe):
    return pipe.generate("a blue square in the bottom right", seed=4, steps=8)[0]


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.mean((np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) ** 2)
    return 10 * np.log10(255**2 / error)


def test_strength_takes_the_last_steps_of_the_schedule(pipe):
    full = partial_timesteps(pipe, "ddim", 20, 1.0)
    assert torch.equal(partial_timesteps(pipe, "ddim", 20, 0.3), full[-7:])  # 6 steps + where they land
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        partial_timesteps(pipe, "ddim", 20, 0.0)
    with pytest.raises(ValueError, match="leaves no step"):
        partial_timesteps(pipe, "ddim", 20, 0.04)


def test_img2img_stays_close_at_low_strength_and_follows_the_prompt_at_full(pipe, picture):
    kwargs = dict(num_images=2, steps=10, seed=1)
    low = pipe.img2img(picture, PROMPT, strength=0.3, **kwargs)
    full = pipe.img2img(picture, PROMPT, strength=1.0, **kwargs)
    assert min(psnr(x, picture) for x in low) > 20 > max(psnr(x, picture) for x in full)
    red = [np.asarray(x.convert("RGB"), dtype=float)[..., 0][:16, :16].mean() for x in full]
    assert min(red) > 60  # the prompt's red circle in the top left, absent from the input
    assert pipe.img2img(picture, PROMPT, strength=0.3, **kwargs)[0].tobytes() == low[0].tobytes()  # seeded


def test_inpainting_keeps_every_pixel_outside_the_mask(pipe, picture):
    mask = np.zeros((32, 32), np.uint8)
    mask[:16, :16] = 255
    results = pipe.inpaint(picture, Image.fromarray(mask), PROMPT, num_images=2, steps=10)
    original = np.asarray(picture)
    for result in results:
        got = np.asarray(result)
        assert np.array_equal(got[mask == 0], original[mask == 0])
        assert not np.array_equal(got[mask > 0], original[mask > 0])
    tensor = pipe.inpaint(picture, Image.fromarray(mask), PROMPT, steps=4, output="tensor")
    from ldmkit.utils.images import from_pil

    outside = torch.from_numpy(mask == 0)
    assert torch.equal(tensor[0][:, outside], from_pil(picture)[:, outside])


def test_outpainting_extends_the_canvas(pipe, picture):
    [result] = pipe.outpaint(picture, PROMPT, left=16, bottom=16, steps=6)
    assert result.size == (48, 48)
    assert np.array_equal(np.asarray(result)[:32, 16:], np.asarray(picture))
    with pytest.raises(ValueError, match="multiples of 16"):
        pipe.outpaint(picture, PROMPT, right=3, steps=2)
    with pytest.raises(ValueError, match="how far to extend"):
        pipe.outpaint(picture, PROMPT, steps=2)


def test_bad_inputs_are_named(pipe, picture, tmp_path):
    with pytest.raises(ValueError, match="the mask is 16x16 but the image is 32x32"):
        pipe.inpaint(picture, Image.new("L", (16, 16)), PROMPT)
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ValueError, match="is not an image that Pillow can read"):
        pipe.img2img(tmp_path / "notes.png", PROMPT)
    with pytest.raises(FileNotFoundError, match="no image file"):
        pipe.img2img(tmp_path / "missing.png", PROMPT)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        pipe.img2img(picture, PROMPT, strength=1.5)
    with pytest.raises(ValueError, match="must be a path, a PIL image"):
        pipe.img2img(42, PROMPT)


def test_nine_channel_inpainting_model(tmp_path):
    """An SD-inpainting-shaped UNet gets [z_t, mask, masked-image latent] and keeps the rest."""
    from benchmarks.sd_models import save_reference, tiny_sd

    save_reference(tiny_sd("v1", in_channels=9), tmp_path / "inpaint", "v1")
    sd = Pipeline.from_pretrained(tmp_path / "inpaint")
    seen = []
    sd.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    [result] = sd.inpaint(image, Image.fromarray(mask), "a cat", steps=3)
    assert set(seen) == {9}
    assert np.array_equal(np.asarray(result)[mask == 0], np.asarray(image)[mask == 0])


def test_command_line(pipe, picture, tmp_path):
    picture.save(tmp_path / "in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    common = ["--model", "shapes", "--num-images", "1", "--steps", "3", "--out", str(out)]
    assert main(["img2img", str(tmp_path / "in.png"), PROMPT, "--strength", "0.5", *common]) == 0
    assert main(["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), PROMPT, *common]) == 0
    assert main(["outpaint", str(tmp_path / "in.png"), PROMPT, "--left", "16", *common]) == 0
    meta = [read_png_metadata(out / f"{k:05d}_seed0.png") for k in range(3)]
    assert [m["task"] for m in meta] == ["img2img", "inpaint", "outpaint"]
    assert meta[0]["strength"] == "0.5" and meta[2]["left"] == "16" and meta[2]["size"] == "48x32"
    assert main(
        ["inpaint", str(tmp_path / "in.png"), str(tmp_path / "in.png"), PROMPT, "--strength", "2", *common]
    ) == 2


def test_task_evaluation_on_held_out_images():
    from ldmkit.apps.evaluate_tasks import evaluate_image_tasks, held_out_images

    images, labels = held_out_images(2)
    assert images.shape == (20, 1, 32, 32) and labels.tolist() == [c for c in range(10) for _ in range(2)]
    result = evaluate_image_tasks(Pipeline.from_pretrained("fashion-mnist-f4"), per_class=1, steps=4)
    assert result["images"] == 10 and result["inpaint_unmasked_pixels_identical"] == 1.0
    assert result["img2img_low_psnr_db"] > 12 and 0 < result["img2img_low_ssim"] <= 1
    for key in ("img2img_full_follows_prompt", "inpaint_right_half_class_agreement", "img2img_low_class_kept"):
        assert 0 <= result[key] <= 1
    with pytest.raises(ValueError, match="measures the fashion-mnist model"):
        evaluate_image_tasks(Pipeline.from_pretrained("shapes"), per_class=1)


def test_repaint_resampling(pipe, picture):
    mask = np.zeros((32, 32), np.uint8)
    mask[16:, :] = 255
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        [plain] = pipe.inpaint(picture, Image.fromarray(mask), PROMPT, steps=4, guidance=1.0, sampler="ddim")
        assert len(calls) == 4
        [resampled] = pipe.inpaint(picture, Image.fromarray(mask), PROMPT, steps=4, guidance=1.0, sampler="ddim",
                                   resample=2)
        assert len(calls) == 4 + 4 * 3  # every step taken three times
    finally:
        handle.remove()
    assert np.array_equal(np.asarray(resampled)[mask == 0], np.asarray(picture)[mask == 0])
    assert not np.array_equal(np.asarray(resampled), np.asarray(plain))
    with pytest.raises(ValueError, match="resample must be a whole number"):
        pipe.inpaint(picture, Image.fromarray(mask), PROMPT, resample=-1)
