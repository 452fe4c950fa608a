"""The GAN and the VAE on shapes: a class is a (colour, shape, quadrant) combination embedded as the
sum of one embedding per attribute, so a combination held out of training still has an embedding
(and the VAE a prior mean) made of trained rows. Tiny runs train, save and load, record their
held-out combinations as evaluate_shapes reads them, draw a held-out caption by seed (image k the
same alone and in a batch), refuse an unknown word by name; each overfits a few renders."""

import json
import math
from dataclasses import replace

import pytest
import torch
from resume_checks import assert_resume_is_exact
from torch import nn

from ldmkit.apps.cli import main
from ldmkit.apps.evaluate import evaluate_shapes
from ldmkit.config import from_dict, to_dict
from ldmkit.data import shapes
from ldmkit.family import GANGenerator, VAEGenerator
from ldmkit.family.gan_networks import ClassEmbedding, GANConfig, class_rows
from ldmkit.pipelines import Pipeline
from ldmkit.train.gan import TIMING, train_gan, training_images
from ldmkit.train.gan_config import GAN_PRESETS, GANTrainConfig
from ldmkit.train.vae import train_vae
from ldmkit.train.vae_config import VAE_PRESETS, VAETrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
ATTRIBUTES = (4, 3, 4)  # colours, shapes, quadrants
GAN_TINY = replace(GAN_PRESETS["tiny"], dataset="shapes",
                   gan=replace(GAN_PRESETS["tiny"].gan, channels=3, num_classes=48, attributes=ATTRIBUTES))
VAE_TINY = replace(VAE_PRESETS["tiny"], dataset="shapes",
                   vae=replace(VAE_PRESETS["tiny"].vae, channels=3, num_classes=48, attributes=ATTRIBUTES))
HELD_OUT = shapes.DEFAULT_HOLDOUT[0]  # a red triangle in the bottom right
HELD_OUT_LABEL = shapes.COMBINATIONS.index(HELD_OUT)


def attribute_rows(combo: tuple[str, str, str]) -> list[int]:
    """The rows of a combination's three values in the stacked tables (4 colours, 3 shapes, 4 quadrants)."""
    colour, shape, quadrant = (list(values).index(v) for values, v in zip(shapes.ATTRIBUTES.values(), combo))
    return [colour, 4 + shape, 7 + quadrant]


def test_a_combinations_embedding_is_the_sum_of_its_attributes():
    torch.manual_seed(0)
    embedding = ClassEmbedding(48, 5, ATTRIBUTES)
    assert embedding.weight.shape == (11, 5)
    for k, combo in enumerate(shapes.COMBINATIONS):  # the label is the product's order, as COMBINATIONS'
        expected = embedding.weight[attribute_rows(combo)].sum(dim=0)
        assert torch.allclose(embedding(torch.tensor([k]))[0], expected), combo
    means = torch.randn(11, 3)
    assert torch.equal(class_rows(means, torch.tensor([3, 1])), means[[3, 1]])  # plain classes: a row each
    assert torch.allclose(class_rows(means, torch.tensor([HELD_OUT_LABEL]), ATTRIBUTES)[0],
                          means[attribute_rows(HELD_OUT)].sum(dim=0))
    # e(y) starts N(0, 1) as one class's row does
    big = ClassEmbedding(48, 4096, ATTRIBUTES)
    assert abs(big(torch.arange(48)).std().item() - 1) < 0.05
    plain = ClassEmbedding(10, 4)  # no attributes: nn.Embedding itself, the same keys and draws
    torch.manual_seed(1)
    reference = nn.Embedding(10, 4)
    torch.manual_seed(1)
    assert torch.equal(ClassEmbedding(10, 4).weight, reference.weight) and list(plain.state_dict()) == ["weight"]
    with pytest.raises(ValueError, match="product is num_classes"):
        GANConfig(num_classes=10, attributes=ATTRIBUTES)


def test_the_shapes_presets_validate():
    for preset, network in ((GAN_PRESETS["shapes"], GAN_PRESETS["shapes"].gan),
                            (VAE_PRESETS["shapes"], VAE_PRESETS["shapes"].vae)):
        assert preset.dataset == "shapes" and preset.shapes_holdout == shapes.DEFAULT_HOLDOUT
        assert (network.channels, network.num_classes, network.attributes) == (3, 48, ATTRIBUTES)
        assert from_dict(type(preset), to_dict(preset)) == preset  # as config.json and resume read it
    with pytest.raises(ValueError, match="shapes dataset needs gan"):
        GANTrainConfig(dataset="shapes")  # 1 channel, 10 plain classes
    with pytest.raises(ValueError, match="vae.attributes"):
        VAETrainConfig(dataset="shapes", vae=replace(VAE_TINY.vae, attributes=(48,)))
    with pytest.raises(ValueError, match="fashion-mnist dataset needs"):
        GANTrainConfig(gan=GAN_TINY.gan)
    with pytest.raises(ValueError, match="unknown shapes combinations"):
        replace(GAN_TINY, shapes_holdout=(("purple", "circle", "top left"),))


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("shapes-gan")
    train_gan(GAN_TINY, run, progress=False)
    return run


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("shapes-vae")
    train_vae(VAE_TINY, run, progress=False)
    return run


def test_the_training_images_leave_the_held_out_combinations_out():
    images, labels = training_images(replace(GAN_TINY, limit=512))
    assert images.shape == (512, 3, 32, 32) and images.min() == -1 and images.max() == 1
    held = {shapes.COMBINATIONS.index(c) for c in shapes.DEFAULT_HOLDOUT}
    assert not held & set(labels.tolist()) and len(set(labels.tolist())) == 44
    for image, label in zip(images[:32], labels[:32]):  # each label names what its image shows
        assert shapes.read_attributes(image) == shapes.COMBINATIONS[label]
    two = training_images(replace(GAN_TINY, classes=(0, 19), limit=8))[1]
    assert len(two) == 8 and set(two.tolist()) == {0, 19}


def test_the_gan_run_saves_loads_and_draws_a_held_out_caption(gan_run, tmp_path):
    meta = json.loads((gan_run / "model/config.json").read_text())
    assert meta["dataset"] == "shapes" and meta["gan"]["attributes"] == list(ATTRIBUTES)
    assert [tuple(c) for c in meta["train"]["shapes_holdout"]] == list(shapes.DEFAULT_HOLDOUT)
    assert [name for name, _ in meta["attribute_names"]] == ["colour", "shape", "quadrant"]
    gan = Pipeline.from_pretrained(gan_run / "model")
    assert isinstance(gan, GANGenerator) and gan.label(shapes.caption(*HELD_OUT)) == HELD_OUT_LABEL
    embedding = gan.net.class_embedding
    assert torch.allclose(embedding(torch.tensor([HELD_OUT_LABEL]))[0],
                          embedding.weight[attribute_rows(HELD_OUT)].sum(dim=0))  # trained rows only
    prompts = [shapes.caption(*HELD_OUT), "a blue circle in the top left"]
    batch = gan.generate(prompts, num_images=3, seed=5, output="tensor")
    assert batch.shape == (6, 3, 32, 32) and batch.abs().max() <= 1
    alone = gan.generate(prompts[0], seed=7, output="tensor")[0]  # image 2 of the batch: seed 5 + 2
    assert torch.allclose(alone, batch[2], atol=1e-6)
    assert torch.allclose(gan.generate(prompts[1], seed=9, output="tensor")[0], batch[4], atol=1e-6)
    assert torch.allclose(gan.generate(class_labels=[HELD_OUT_LABEL], num_images=3, seed=5, output="tensor"),
                          batch[:3], atol=1e-6)
    checkpoint = GANGenerator.from_folder(gan_run / "checkpoints/step-00000004")  # statistics of trained classes
    assert torch.allclose(checkpoint.generate(prompts[0], seed=5, output="tensor"), batch[:1], atol=1e-6)
    scores = evaluate_shapes(gan, per_combination=1)  # seen and held-out apart, as for the diffusion models
    assert scores["seen"]["images"] == 44 and scores["held_out"]["images"] == 4 * 4
    assert_resume_is_exact(train_gan, GAN_TINY, gan_run, tmp_path, timing=TIMING)


def test_the_vae_run_saves_loads_and_draws_a_held_out_caption(vae_run):
    vae = Pipeline.from_pretrained(vae_run / "model")
    assert isinstance(vae, VAEGenerator) and vae.prior_means.shape == (11, VAE_TINY.vae.z_dim)
    assert vae.describe()["attribute_names"][0] == ("colour", ["red", "green", "blue", "yellow"])
    prompts = ["a green square in the bottom left", shapes.caption(*HELD_OUT)]
    batch = vae.generate(prompts, num_images=2, seed=3, output="tensor")
    assert batch.shape == (4, 3, 32, 32) and batch.abs().max() <= 1
    assert torch.allclose(vae.generate(prompts[1], seed=6, output="tensor")[0], batch[3], atol=1e-6)
    # the held-out combination's prior mean is the sum of its three trained rows: as T -> 0, its decoding
    mean = vae.prior_means[attribute_rows(HELD_OUT)].sum(dim=0, keepdim=True)
    frozen = vae.generate(prompts[1], num_images=2, output="tensor", temperature=1e-6)
    decoded = vae.decoder(mean, torch.tensor([HELD_OUT_LABEL]))
    assert torch.allclose(frozen, decoded.expand(2, -1, -1, -1), atol=1e-4)
    checkpoint = VAEGenerator.from_folder(vae_run / "checkpoints/step-00000004")
    assert torch.allclose(checkpoint.generate(prompts, num_images=2, seed=3, output="tensor"), batch, atol=1e-6)
    assert evaluate_shapes(vae, per_combination=1)["held_out"]["images"] == 16


@pytest.mark.parametrize("kind", ["gan", "vae"])
def test_an_unknown_word_is_refused_by_name(kind, gan_run, vae_run):
    model = (GANGenerator if kind == "gan" else VAEGenerator).from_folder((gan_run if kind == "gan" else vae_run)
                                                                          / "model")
    known = "colour: red, green, blue, yellow; shape: circle, square, triangle; quadrant: top left"
    for prompt, word in (("a purple circle in the top left", "purple"), ("a red ring in the top left", "ring"),
                         ("a red circle in the middle", "middle")):
        with pytest.raises(ValueError, match=f"unknown word '{word}'.*{known}"):
            model.generate(prompt)
    with pytest.raises(ValueError, match="must name one quadrant.*names none"):
        model.generate("a red circle")
    with pytest.raises(ValueError, match=r"must name one shape.*\['circle', 'square'\]"):
        model.generate("a red circle square in the top left")
    with pytest.raises(ValueError, match="class_labels must be whole numbers in 0..47"):
        model.generate(class_labels=[48])
    assert model.generate("", num_images=2, output="tensor").shape == (2, 3, 32, 32)  # "": a drawn combination


def test_a_shapes_gan_overfits_a_few_renders(tmp_path):
    """8 renders of two combinations, as the Fashion-MNIST test's two classes: each combination's
    samples land near its renders, nearer than to the other's, and vary with z."""
    steps = 200
    config = replace(GAN_TINY, gan=replace(GAN_TINY.gan, z_dim=32, base_channels=16, d_base_channels=16),
                     classes=(0, 19), limit=8, steps=steps, lr=1e-3, betas=(0.0, 0.9), ema_decay=0.9,
                     log_every=steps, sample_every=steps, checkpoint_every=steps)
    images, labels = training_images(config)
    train_gan(config, tmp_path, progress=False)
    gan = GANGenerator.from_folder(tmp_path / "model")
    rms = lambda a, b: torch.cdist(a.flatten(1), b.flatten(1)) / math.sqrt(a[0].numel())  # noqa: E731
    between = rms(images[labels == 0], images[labels == 19]).mean().item()
    for label in (0, 19):
        samples = gan.generate(shapes.caption(*shapes.COMBINATIONS[label]), num_images=16, output="tensor")
        distance = rms(samples, images)  # (16, 8)
        nearest_own = distance[:, labels == label].min(dim=1).values
        nearest_other = distance[:, labels != label].min(dim=1).values
        assert (nearest_own < nearest_other).float().mean() >= 0.9, label
        assert nearest_own.mean() < 0.65 * between, (label, nearest_own.mean().item(), between)  # ~0.25x
        own = images[labels == label]
        spread = lambda x: rms(x, x).sum().item() / (len(x) * (len(x) - 1))  # noqa: E731  (mean over pairs)
        assert spread(samples) > 0.4 * spread(own), (label, spread(samples), spread(own))  # ~0.6x-0.7x
        assert len(set(distance[:, labels == label].argmin(dim=1).tolist())) >= 2, label  # not all near one


def test_a_shapes_vae_overfits_a_few_renders(tmp_path):
    config = replace(VAE_TINY, vae=replace(VAE_TINY.vae, z_dim=8, base_channels=16), classes=(0, 19), limit=8,
                     steps=150, lr=3e-3, kl_weight=0.05, log_every=150, sample_every=150, checkpoint_every=150)
    summary = train_vae(config, tmp_path, progress=False)
    images = training_images(config)[0]
    spread = (images - images.mean(dim=0)).pow(2).mean().item()  # what the mean image would score
    assert summary["mse"] < 0.1 * spread, (summary, spread)  # ~0.07x
    assert summary["sigma"] == pytest.approx(math.sqrt(summary["mse"]), rel=1e-5)


def test_the_command_trains_the_shapes_preset(tmp_path, capsys):
    assert main(["train-vae", "--preset", "shapes", "--out", str(tmp_path), "--steps", "1", "--set", "limit=16",
                 "--set", "batch_size=4", "--set", "samples_per_class=1"]) == 0
    assert "done:" in capsys.readouterr().out
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["dataset"] == "shapes" and meta["vae"]["channels"] == 3
