"""unCLIP (DALL-E 2) as one generator: a tiny trained prior (train_unclip_prior's tiny preset) and a tiny
decoder (the tiny-unclip-decoder preset's network, random weights: the composition is what is checked)
assembled by save_unclip, opened by Pipeline.from_pretrained; generate is the prior's normalised
embeddings decoded, variations a CLIP embedding of the image decoded, image k from seed + k alone or
in a batch; `ldmkit make-unclip`, `generate` and `variations` write PNGs carrying their settings;
parts that do not fit and missing folders are refused clearly."""

import json
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from ldmkit.apps.cli import main
from ldmkit.family import UnclipGenerator, family_kind, save_unclip
from ldmkit.model import GenerationDefaults, ModelParts, load_autoencoder, resolve_repo_path
from ldmkit.nets import make_net
from ldmkit.pipelines import Pipeline
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS
from ldmkit.train.unclip_prior import train_unclip_prior
from ldmkit.train.unclip_prior_config import PRIOR_PRESETS
from ldmkit.utils.images import from_pil, read_png_metadata

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

DECODER = DIFFUSION_PRESETS["tiny-unclip-decoder"]
PROMPTS = ["a photo of a bag", "a photo of a coat"]


def make_decoder(folder, pooled_dim: int = 128, embedding_clip: str = "clip-small"):
    """A tiny decoder folder whose random weights make every input count (a fresh UNet outputs 0)."""
    config = replace(DECODER.model, net=replace(DECODER.model.net, pooled_dim=pooled_dim),
                     embedding_clip=embedding_clip)
    torch.manual_seed(0)
    net = make_net(config.net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    autoencoder = load_autoencoder(resolve_repo_path(DECODER.autoencoder))
    Pipeline(ModelParts(net, autoencoder, config, defaults=GenerationDefaults(steps=3))).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("unclip")
    train_unclip_prior(PRIOR_PRESETS["tiny"], root / "prior-run", progress=False)
    return root / "prior-run" / "model", make_decoder(root / "decoder")


@pytest.fixture(scope="module")
def unclip(parts, tmp_path_factory):
    folder = save_unclip(tmp_path_factory.mktemp("assembled") / "unclip", *parts, sampling={"prior_steps": 3})
    return folder, Pipeline.from_pretrained(folder)


def test_generate_decodes_the_priors_normalised_embeddings_by_seed(unclip):
    folder, model = unclip
    assert family_kind(folder) == "unclip" and isinstance(model, UnclipGenerator)
    assert model.describe()["kind"] == "unclip" and model.settings_used({})["prior_steps"] == 3
    images = model.generate(PROMPTS, num_images=2, seed=5, output="tensor")
    assert images.shape == (4, 1, 32, 32)
    alone = model.generate(PROMPTS[1], seed=5 + 3, output="tensor")  # prompt 1, image 1
    torch.testing.assert_close(alone[0], images[3], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(images[2], images[3], atol=1e-3)
    embeddings = model.prior.image_embeddings(PROMPTS, 2, seed=5, steps=3)
    by_hand = model.decoder.generate(image_embeds=F.normalize(embeddings, dim=1), seed=5, output="tensor")
    torch.testing.assert_close(images, by_hand)
    pil = model.generate(PROMPTS[0], prior_guidance=2.0, steps=2, decoder_guidance=1.0, sampler="ddim")
    assert [(im.size, im.mode) for im in pil] == [((32, 32), "L")]


def test_variations_decode_the_images_clip_embeddings_by_seed(unclip, tmp_path):
    _, model = unclip
    images = model.generate(PROMPTS, seed=0)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for image, path in zip(images, paths):
        image.save(path)
    varied = model.variations(paths, num_images=2, seed=3, output="tensor")
    assert varied.shape == (4, 1, 32, 32)
    alone = model.variations(images[1], num_images=1, seed=3 + 2, output="tensor")  # image 1, variation 0
    torch.testing.assert_close(alone[0], varied[2], atol=1e-5, rtol=1e-5)
    embedding = model.prior.clip.encode_image([images[0]])
    by_hand = model.decoder.generate(image_embeds=embedding, num_images=2, seed=3, output="tensor")
    torch.testing.assert_close(varied[:2], by_hand)
    pixels = from_pil(images[0], channels=1)  # the same image as a tensor in [-1, 1]
    torch.testing.assert_close(model.variations(pixels, num_images=2, seed=3, output="tensor"), by_hand,
                               atol=1e-5, rtol=1e-5)


def test_the_commands_assemble_generate_and_vary_with_their_settings(parts, tmp_path, capsys):
    prior, decoder = parts
    folder, out = tmp_path / "unclip", tmp_path / "out"
    assert main(["make-unclip", str(folder), "--prior", str(prior), "--decoder", str(decoder), "--prior-steps", "3",
                 "--decoder-guidance", "2"]) == 0
    assert json.loads((folder / "config.json").read_text())["sampling"] == {"prior_steps": 3, "decoder_guidance": 2.0}
    assert main(["generate", PROMPTS[0], "--model", str(folder), "--num-images", "2", "--seed", "5",
                 "--prior-guidance", "1.5", "--steps", "2", "--out", str(out)]) == 0
    text = read_png_metadata(out / "00001_seed6.png")
    assert (text["kind"], text["prompt"], text["seed"]) == ("unclip", PROMPTS[0], "6")
    assert (text["prior_steps"], text["prior_guidance"], text["steps"], text["decoder_guidance"], text["sampler"]) == \
        ("3", "1.5", "2", "2.0", "dpmpp_2m")
    assert main(["variations", str(out / "00000_seed5.png"), "--model", str(folder), "--num-images", "2",
                 "--seed", "7", "--out", str(out / "varied")]) == 0
    text = read_png_metadata(out / "varied" / "00001_seed8.png")
    assert (text["task"], text["input"], text["steps"], text["decoder_guidance"]) == \
        ("variations", str(out / "00000_seed5.png"), "3", "2.0")
    assert "prior_guidance" not in text and (out / "varied" / "grid_00000.png").is_file()
    assert main(["generate", PROMPTS[0], "--model", str(folder), "--guidance", "2", "--out", str(tmp_path)]) == 2
    assert "unclip model" in capsys.readouterr().err
    assert main(["variations", str(out / "00000_seed5.png"), "--model", str(decoder), "--out", str(tmp_path)]) == 2
    assert "makes no image variations" in capsys.readouterr().err


def test_parts_that_do_not_fit_and_missing_folders_are_refused(parts, unclip, tmp_path):
    prior, decoder = parts
    with pytest.raises(FileNotFoundError, match="names the prior .*nowhere.* which is not there"):
        save_unclip(tmp_path / "u", tmp_path / "nowhere", decoder)
    with pytest.raises(ValueError, match="reads 64-d ones"):
        save_unclip(tmp_path / "u", prior, make_decoder(tmp_path / "narrow", pooled_dim=64))
    with pytest.raises(ValueError, match="both must use the same CLIP"):
        save_unclip(tmp_path / "u", prior, make_decoder(tmp_path / "other", embedding_clip="models/other-clip"))
    with pytest.raises(ValueError, match="conditioned on 'text'; an unCLIP decoder is conditioned on CLIP image"):
        save_unclip(tmp_path / "u", prior, "models/fashion-mnist-f4")
    with pytest.raises(ValueError, match="does not hold an ldmkit latent diffusion model"):
        save_unclip(tmp_path / "u", prior, prior)
    with pytest.raises(ValueError, match="unknown sampling settings \\['guidance'\\]"):
        save_unclip(tmp_path / "u", prior, decoder, sampling={"guidance": 3})
    assert not (tmp_path / "u").exists()
    folder, model = unclip
    with pytest.raises(ValueError, match="load the folder with ldmkit.Pipeline.from_pretrained"):
        UnclipGenerator.from_folder(folder)
    moved = save_unclip(tmp_path / "moved", prior, decoder)
    meta = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**meta, "decoder": str(tmp_path / "gone")}))
    with pytest.raises(FileNotFoundError, match="names the decoder .*gone, which is not there"):
        Pipeline.from_pretrained(moved)
    with pytest.raises(ValueError, match="guidance must be >= 1"):
        model.generate(PROMPTS[0], prior_guidance=0.5)
    with pytest.raises(ValueError, match="an image is a path, a PIL image or a tensor"):
        model.variations([3])
    with pytest.raises(FileNotFoundError, match="no image file at"):
        model.variations(tmp_path / "missing.png")
