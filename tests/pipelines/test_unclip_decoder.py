"""The unCLIP decoder: a latent diffusion model conditioned on CLIP image embeddings (conditioning
"image-embedding"). Its conditioner's null is the zero embedding, and training drops embeddings to
it at the configured rate; the training images' embeddings are those variations compute from the
same images; the tiny preset trains, saves, loads and generates from given embeddings (a seed
makes the same image alone or in a batch); a tiny decoder overfits a few examples and uses their
embeddings; bad input is refused clearly."""

import json
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from ldmkit.autoencoders import pixel_space
from ldmkit.data import load_fashion_mnist
from ldmkit.diffusion import diffusion_loss, make_schedule
from ldmkit.model import LatentDiffusionConfig, ModelParts
from ldmkit.model.clip import CLIP
from ldmkit.model.conditioner import ImageEmbeddingConditioner, conditioner_for
from ldmkit.nets import UNET_PRESETS, make_net
from ldmkit.pipelines import Pipeline
from ldmkit.train.diffusion import train_diffusion
from ldmkit.train.diffusion_config import DIFFUSION_PRESETS
from ldmkit.train.unclip_decoder import embed_training_images, preview_rows
from ldmkit.utils.images import to_pil

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = DIFFUSION_PRESETS["tiny-unclip-decoder"]
E = 128  # clip-small's embeddings


def unit_embeddings(count: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(count, E, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unclip-decoder")
    train_diffusion(TINY, folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def decoder(run):
    return Pipeline.from_pretrained(run / "model")


def test_the_null_is_the_zero_embedding_and_training_drops_to_it_at_the_rate():
    conditioner = conditioner_for(TINY.model)
    assert isinstance(conditioner, ImageEmbeddingConditioner) and conditioner.width == E
    given = unit_embeddings(2)
    pooled = conditioner([given[0], "", given[1]], torch.device("cpu"), torch.float32)["pooled"]  # (3, E)
    assert torch.equal(pooled[1], torch.zeros(E)) and torch.equal(pooled[[0, 2]], given)
    rows = torch.arange(1, 200_001, dtype=torch.float32)[:, None].expand(-1, 4)  # no row is zero
    drop = torch.rand(len(rows), generator=torch.Generator().manual_seed(0)) < TINY.cond_dropout
    dropped = ImageEmbeddingConditioner.dropped(rows, drop)["pooled"]
    zero = (dropped == 0).all(dim=1)
    assert torch.equal(zero, drop) and abs(zero.float().mean().item() - 0.1) < 0.003
    assert torch.equal(dropped[~zero], rows[~zero])  # the others keep their embedding
    assert DIFFUSION_PRESETS["fashion-mnist-unclip-decoder"].cond_dropout == 0.1  # DALL-E 2's 10%
    with pytest.raises(ValueError, match="conditioned on 128-d CLIP image embeddings, not on prompts"):
        conditioner(["a photo of a bag"], torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match=r"an image embedding of this model is \(128,\), got \(7,\)"):
        conditioner([torch.zeros(7)], torch.device("cpu"), torch.float32)


def test_training_embeds_images_as_variations_embed_their_files():
    images, labels = load_fashion_mnist("train", limit=4)
    clip = CLIP.from_pretrained("clip-small")
    trained_on = embed_training_images("clip-small", E, images, torch.device("cpu"), progress=False)
    torch.testing.assert_close(trained_on, clip.encode_image([to_pil(x) for x in images]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(trained_on.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="image embeddings are 128-d but the network reads 64-d"):
        embed_training_images("clip-small", 64, images, torch.device("cpu"), progress=False)
    assert preview_rows(torch.tensor([3, 3, 1, 0, 1])).tolist() == [0, 2, 3]  # the first of each class
    assert preview_rows(torch.full((10,), -1), count=4).tolist() == [0, 1, 2, 3]  # a folder: no classes


def test_the_tiny_preset_trains_saves_and_generates_from_embeddings(run, decoder):
    meta = json.loads((run / "model" / "config.json").read_text())
    model = meta["model"]
    assert (model["conditioning"], model["embedding_clip"], model["net"]["pooled_tokens"]) == \
        ("image-embedding", "clip-small", 4)
    assert meta["text_encoder"] is None and (run / "samples" / "step_000004.png").is_file()
    assert decoder.config.embedding_dim == E
    embeds = unit_embeddings(2)
    batch = decoder.generate(image_embeds=embeds, num_images=2, steps=3, seed=5, sampler="euler_a", output="latent")
    assert batch.shape == (4, 4, 8, 8)  # embedding-major: rows 0, 1 of the first embedding
    alone = decoder.generate(image_embeds=embeds[1], steps=3, seed=5 + 2, sampler="euler_a", output="latent")
    torch.testing.assert_close(batch[2], alone[0], atol=1e-5, rtol=1e-5)
    images = decoder.generate(image_embeds=embeds, steps=2)
    assert [(im.size, im.mode) for im in images] == [((32, 32), "L")] * 2
    varied = decoder.img2img(images[0], image_embeds=embeds[:1], num_images=2, strength=0.5, steps=4, output="tensor")
    each = decoder.img2img(images[0], image_embeds=embeds, num_images=2, strength=0.5, steps=4, output="tensor")
    assert varied.shape == each.shape == (2, 1, 32, 32)
    torch.testing.assert_close(varied[0], each[0])  # image 0: the same embedding and seed


def test_bad_input_is_refused_clearly(decoder):
    with pytest.raises(ValueError, match=r"clip-small.s image embeddings: give image_embeds= \(N, 128\)"):
        decoder.generate(steps=2)
    with pytest.raises(ValueError, match="not on text: give image_embeds= and no prompt"):
        decoder.generate("a photo of a bag", image_embeds=unit_embeddings(1), steps=2)
    with pytest.raises(ValueError, match="not on text"):
        decoder.generate(image_embeds=unit_embeddings(1), negative_prompt="a bag", steps=2)
    with pytest.raises(ValueError, match=r"image_embeds must be \(N, 128\).* got shape \(2, 64\)"):
        decoder.generate(image_embeds=torch.zeros(2, 64), steps=2)
    with pytest.raises(ValueError, match="reranking steer towards a prompt"):
        decoder.generate(image_embeds=unit_embeddings(1), rerank=2, steps=2)
    with pytest.raises(ValueError, match=r"one image embedding, or one per image \(2\), got 3"):
        decoder.img2img(torch.zeros(1, 32, 32), image_embeds=unit_embeddings(3), num_images=2, steps=2)
    with pytest.raises(ValueError, match="give image_embeds="):
        decoder.inpaint(torch.zeros(1, 32, 32), torch.ones(1, 32, 32), steps=2)
    net = replace(UNET_PRESETS["tiny"], in_channels=1, out_channels=1, context_dim=None, num_classes=3)
    classes = Pipeline(ModelParts(make_net(net), pixel_space(1), LatentDiffusionConfig(net=net, conditioning="class"),
                                  class_names=["a", "b"]))
    with pytest.raises(ValueError, match="image_embeds condition an unCLIP decoder .* conditioned on 'class'"):
        classes.generate(image_embeds=unit_embeddings(1), steps=2)


def test_bad_configs_are_refused_clearly():
    net = TINY.model.net
    with pytest.raises(ValueError, match="needs a UNet with pooled_dim = the embedding's width"):
        LatentDiffusionConfig(net=replace(net, pooled_dim=None, pooled_tokens=0, context_dim=None),
                              conditioning="image-embedding", embedding_clip="clip-small")
    with pytest.raises(ValueError, match="has no text: set net.pooled_tokens"):
        LatentDiffusionConfig(net=replace(net, pooled_tokens=0), conditioning="image-embedding",
                              embedding_clip="clip-small")
    with pytest.raises(ValueError, match="needs embedding_clip"):
        LatentDiffusionConfig(net=net, conditioning="image-embedding")
    with pytest.raises(ValueError, match="it needs conditioning 'text' or 'image-embedding', got 'class'"):
        LatentDiffusionConfig(net=replace(net, num_classes=3), conditioning="class")
    inpainting = replace(TINY.model, net=replace(net, in_channels=9), task="inpainting")
    with pytest.raises(ValueError, match="trained for generation here, not inpainting"):
        replace(TINY, model=inpainting)
    # an embedding model needs no cross-attention: the embedding alone joins the time embedding
    LatentDiffusionConfig(net=replace(net, pooled_tokens=0, context_dim=None), conditioning="image-embedding",
                          embedding_clip="clip-small")


def test_a_tiny_decoder_overfits_a_few_examples_and_reads_their_embeddings():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    z0, embeddings = torch.randn(4, 4, 4, 4, generator=gen), unit_embeddings(4)
    net, sched = make_net(TINY.model.net), make_schedule(TINY.model.schedule)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)

    def held_loss(given: torch.Tensor) -> float:
        """The loss of the four examples at 64 fixed (t, eps) draws, conditioned on `given`."""
        rows = torch.arange(4).repeat(16)
        with torch.no_grad():
            return diffusion_loss(lambda x, t: net(x, t, pooled=given[rows]), z0[rows], sched,
                                  gen=torch.Generator().manual_seed(123)).item()

    before = held_loss(embeddings)
    for _ in range(60):
        rows = torch.randint(4, (8,), generator=gen)
        cond = ImageEmbeddingConditioner.dropped(embeddings[rows], torch.rand(8, generator=gen) < 0.1)
        loss = diffusion_loss(lambda x, t, cond=cond: net(x, t, **cond), z0[rows], sched, gen=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_loss(embeddings)
    assert after < 0.4 * before, (before, after)
    assert after < held_loss(embeddings[[1, 2, 3, 0]])  # each example's own embedding serves it best
