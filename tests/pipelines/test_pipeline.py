"""Stage 2 end to end: train a tiny model, load it, generate; seeds, guidance identities, PNG
metadata, a user's captioned folder, and clear errors for bad input."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.apps.cli import main
from ldmkit.apps.generate import generate_to_folder
from ldmkit.model import ModelParts
from ldmkit.pipelines import Pipeline
from ldmkit.pipelines.infotext import parse_infotext
from ldmkit.storage import load_checkpoint
from ldmkit.train.diffusion import train_diffusion
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS, DiffusionDataConfig
from ldmkit.utils.images import read_png_metadata

TINY = DIFFUSION_PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiny-run")
    train_diffusion(TINY, run, progress=False)
    return run


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return Pipeline.from_pretrained(tiny_run / "model")


def test_train_then_generate(tiny_run, pipe):
    images = pipe.generate("a photo of a sneaker", num_images=3, steps=4)
    assert [(im.size, im.mode) for im in images] == [((32, 32), "L")] * 3
    assert (tiny_run / "samples" / "step_000004.png").is_file() and (tiny_run / "loss.png").is_file()
    assert pipe.meta["dataset"] == "fashion-mnist" and pipe.defaults.guidance == TINY.guidance


def test_the_model_folder_holds_the_ema_weights(tiny_run, pipe):
    states, _, _ = load_checkpoint(tiny_run / "checkpoints" / "step-00000004")
    shipped = pipe.unet.state_dict()
    assert all(torch.equal(shipped[k], v) for k, v in states["ema_unet"].items())
    assert not all(torch.equal(shipped[k], v) for k, v in states["unet"].items())


def test_each_image_depends_on_its_own_seed_only(pipe):
    # a stochastic sampler, so the per-step noise must follow the per-image seed too
    batch = pipe.generate(["a photo of a bag", "a photo of a coat"], num_images=2, steps=3, seed=10,
                          sampler="euler_a", output="latent")
    alone = pipe.generate("a photo of a coat", steps=3, seed=12, sampler="euler_a", output="latent")
    torch.testing.assert_close(batch[2], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[2], batch[3])


def test_guidance_identities(pipe):
    """Scale 0 is the unconditional model, which the empty prompt also gives at scale 1."""
    unet = copy.deepcopy(pipe.unet)  # 4 training steps leave the text paths near their zero init
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    noisy = Pipeline(ModelParts(unet, pipe.autoencoder, pipe.config, pipe.text_encoder))
    run = lambda prompt, g: noisy.generate(prompt, guidance=g, steps=3, seed=1, output="latent")  # noqa: E731
    torch.testing.assert_close(run("a photo of a bag", 0.0), run("", 1.0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(run("a photo of a bag", 1.0), run("", 1.0), atol=1e-3)


def test_latent_output_decodes_to_the_tensor_output(pipe):
    z0 = pipe.generate("a photo of a dress", steps=3, output="latent")
    assert z0.shape == (1, 4, 8, 8)
    torch.testing.assert_close(pipe.decode(z0), pipe.generate("a photo of a dress", steps=3, output="tensor"))
    z_T = pipe.initial_latents(1, seed=0)
    torch.testing.assert_close(pipe.generate("a photo of a dress", steps=3, latents=z_T, output="latent"), z0)


def test_png_metadata_round_trip_regenerates_the_image(tmp_path, pipe):
    paths = generate_to_folder("a photo of a dress", tmp_path, num_images=2, steps=3, seed=7, guidance=2.5,
                               sampler="euler", pipeline=pipe)
    assert [p.name for p in paths] == ["00000_seed7.png", "00001_seed8.png", "grid_00000.png"]
    meta = read_png_metadata(paths[1])
    assert {k: meta[k] for k in ("prompt", "negative_prompt", "seed", "sampler", "steps", "guidance")} == {
        "prompt": "a photo of a dress", "negative_prompt": "", "seed": "8", "sampler": "euler", "steps": "3",
        "guidance": "2.5"}
    assert meta["model"] == pipe.name
    a1111 = parse_infotext(meta["parameters"])  # A1111's text of the same settings, for that family of tools
    assert {k: a1111[k] for k in ("prompt", "seed", "sampler", "steps", "guidance", "model", "size")} == {
        "prompt": "a photo of a dress", "seed": 8, "sampler": "euler", "steps": 3, "guidance": 2.5,
        "model": pipe.name, "size": "32x32"}
    again = pipe.generate(meta["prompt"], meta["negative_prompt"], seed=int(meta["seed"]), steps=int(meta["steps"]),
                          sampler=meta["sampler"], guidance=float(meta["guidance"]))[0]
    diff = np.abs(np.asarray(again, np.int16) - np.asarray(Image.open(paths[1]), np.int16))
    assert diff.max() <= 1  # batch of 2 vs alone: float rounding may move a pixel by one level
    more = generate_to_folder("a photo of a dress", tmp_path, num_images=1, steps=3, pipeline=pipe)
    assert [p.name for p in more] == ["00002_seed0.png"]  # numbered on, nothing overwritten


def test_bad_generation_input_is_refused_clearly(pipe):
    with pytest.raises(ValueError, match="steps must be a whole number >= 1"):
        pipe.generate("a photo of a bag", steps=0)
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        pipe.generate("a photo of a bag", guidance=-1)
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        pipe.generate("a photo of a bag", sampler="plms")
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 4, 8, 8\)"):
        pipe.generate("a photo of a bag", num_images=2, latents=torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="output must be one of"):
        pipe.generate("a photo of a bag", output="numpy")
    with pytest.raises(FileNotFoundError, match="no model 'no-such-model'.*shipped models"):
        Pipeline.from_pretrained("no-such-model")


def test_cli_generate_and_its_errors(tmp_path, tiny_run, capsys):
    model = str(tiny_run / "model")
    assert main(["generate", "", "--model", model, "--num-images", "2", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert "grid_00000.png" in capsys.readouterr().out  # the empty prompt: unconditional, fine
    for args, message in [
        (["--model", "nope"], "no model 'nope'"),
        (["--model", model, "--steps", "0"], "steps must be"),
        (["--model", model, "--guidance", "-2"], "guidance must be >= 0"),
    ]:
        assert main(["generate", "a photo of a bag", "--out", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_class_conditioned_model_takes_class_names_as_prompts(tmp_path):
    unet = replace(TINY.model.net, context_dim=None, num_classes=11)  # 10 classes + the null class
    config = replace(TINY, model=replace(TINY.model, net=unet, conditioning="class"), steps=2)
    train_diffusion(config, tmp_path, progress=False)
    pipe = Pipeline.from_pretrained(tmp_path / "model")
    assert pipe.encode_prompts(["a photo of a bag", "ankle boot", ""])["class_labels"].tolist() == [8, 9, 10]
    assert len(pipe.generate(["a photo of a bag", ""], steps=2)) == 2
    with pytest.raises(ValueError, match="knows only the prompts"):
        pipe.generate("a photo of a cat", steps=2)


def test_training_on_a_captioned_folder_skips_and_counts_unreadable_files(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"pattern number {i % 2}")
    (folder / "broken.png").write_bytes(b"not a png at all")
    config = replace(TINY, data=DiffusionDataConfig(dataset="folder", path=str(folder)), steps=2)
    train_diffusion(config, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert "6 images from" in out and "1 skipped" in out and "broken.png: unreadable" in out
    pipe = Pipeline.from_pretrained(tmp_path / "run" / "model")
    assert pipe.generate("pattern number 1", steps=2)[0].size == (32, 32)
    with pytest.raises(ValueError, match="dataset 'folder' needs data.path"):
        DiffusionDataConfig(dataset="folder")


def test_a_first_stage_of_the_same_latent_space_can_be_swapped_in(tiny_run):
    same = Pipeline.from_pretrained(tiny_run / "model", autoencoder="models/autoencoders/fmnist-kl-f4")
    assert same.generate("a photo of a bag", steps=2)[0].size == (32, 32)
    with pytest.raises(ValueError, match="does not share this model's latent space"):
        Pipeline.from_pretrained(tiny_run / "model", autoencoder="models/autoencoders/shapes-kl-f4")


def test_bfloat16_inference_stays_close_to_float32():
    """bf16 networks, float32 sampler: the images differ by bf16 round-off only."""
    full = Pipeline.from_pretrained("shapes")
    half = Pipeline.from_pretrained("shapes", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and next(half.vae.parameters()).dtype == torch.bfloat16
    kwargs = dict(num_images=2, steps=6, output="tensor", seed=1)
    a, b = (full.generate("a red circle in the top left", **kwargs),
            half.generate("a red circle in the top left", **kwargs))
    assert b.dtype == torch.float32
    assert 0 < (a - b).abs().mean() < 0.01


def test_tiled_vae_decoding_through_generate():
    pipe = Pipeline.from_pretrained("shapes")
    kwargs = dict(num_images=1, steps=4, output="tensor", seed=2, height=64, width=64)
    whole = pipe.generate("a blue square in the bottom right", **kwargs)
    assert torch.equal(pipe.generate("a blue square in the bottom right", vae_tile=16, **kwargs), whole)  # one tile
    tiled = pipe.generate("a blue square in the bottom right", vae_tile=8, **kwargs)  # 2 x 2 tiles, overlap 2
    assert not torch.equal(tiled, whole) and (tiled - whole).abs().mean() < 0.05
