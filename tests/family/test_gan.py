"""The GAN of the generative family: the generator makes images in [-1, 1] of the asked class, a
conditional GAN overfits a few examples of two classes, a run stopped and resumed equals an
uninterrupted one bit for bit, the saved folder loads and samples by seed (image k the same
alone and in a batch), bad prompts and labels are refused, the command trains one."""

import json
import math
from dataclasses import replace

import pytest
import torch
from PIL import Image
from resume_checks import assert_resume_is_exact

from ldmkit.apps.cli import main
from ldmkit.family import GANGenerator
from ldmkit.family.gan import truncated_normal
from ldmkit.family.gan_networks import GANConfig, Generator, MinibatchStd, ProjectionDiscriminator
from ldmkit.storage import CheckpointError, load_checkpoint
from ldmkit.train.gan import TIMING, train_gan, training_images
from ldmkit.train.gan_config import GAN_PRESETS, GANTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = GAN_PRESETS["tiny"]


def test_the_networks_shapes_and_range():
    torch.manual_seed(0)
    config = replace(TINY.gan, d_layers=3)
    generator, discriminator = Generator(config).eval(), ProjectionDiscriminator(config).eval()
    z, y = torch.randn(3, config.z_dim), torch.tensor([0, 7, 9])
    x = generator(z, y)
    assert x.shape == (3, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert not torch.allclose(generator(z, torch.tensor([1, 1, 1])), x)  # the class matters
    assert torch.allclose(generator(z[:1], y[:1]), x[:1], atol=1e-6)  # eval: images do not interact
    logits = discriminator(x, y)
    assert logits.shape == (3, 1, 2, 2)  # one verdict per patch
    assert not torch.allclose(discriminator(x, torch.tensor([1, 1, 1])), logits)  # the projection
    assert Generator(replace(config, image_size=64))(z, y).shape == (3, 1, 64, 64)
    batch = generator.train()(torch.randn(256, config.z_dim), torch.arange(256) % 10)
    generator.refresh_batch_statistics().eval()  # eval mode's images then spread as training mode's
    assert generator.training is False and generator.project_norm.momentum == 0.1
    alone = generator(torch.randn(256, config.z_dim), torch.arange(256) % 10)
    assert abs(alone.std() / batch.std() - 1) < 0.1 and abs(generator(z, y).std() / x.std() - 1) > 0.1
    unconditional = replace(config, conditioning="none")
    assert Generator(unconditional).class_embedding is None
    assert ProjectionDiscriminator(unconditional)(x).shape == (3, 1, 2, 2)
    with pytest.raises(ValueError, match="class_labels"):
        generator(z)
    with pytest.raises(ValueError, match="power of 2"):
        GANConfig(image_size=48)
    with pytest.raises(ValueError, match="conditioning"):
        GANConfig(conditioning="text")


def test_minibatch_std_appends_each_groups_standard_deviation():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 2, 2)
    out = MinibatchStd(4)(x)
    assert out.shape == (8, 4, 2, 2) and torch.equal(out[:, :3], x)
    for m in range(2):  # groups of 4: image i in group i mod 2
        by_hand = x[m::2].std(dim=0, correction=0).mean()  # per feature and position, then averaged
        assert torch.allclose(out[m::2, 3], by_hand.expand(4, 2, 2), atol=1e-6), m
    whole = MinibatchStd(4)(x[:6])  # 4 does not divide 6: the whole batch is one group
    assert torch.allclose(whole[:, 3], x[:6].std(dim=0, correction=0).mean().expand(6, 2, 2), atol=1e-6)
    assert MinibatchStd(4)(x[:1])[:, 3].max() < 1e-3  # one image alone: no spread
    with pytest.raises(ValueError, match="d_minibatch_std"):
        GANConfig(d_minibatch_std=1)


def test_the_discriminators_minibatch_std():
    torch.manual_seed(0)
    config = replace(TINY.gan, d_layers=3, d_norm="group", d_minibatch_std=4)
    discriminator = ProjectionDiscriminator(config).eval()
    assert discriminator.patches.main[-1].in_channels == 8 * 8 + 1  # the PatchGAN's last width, and the std
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8)
    logits = discriminator(x, y)
    assert logits.shape == (8, 1, 2, 2)
    changed = x.clone()
    changed[2] = 0  # image 2 shares image 0's group (i mod 2), not image 1's
    after = discriminator(changed, y)
    assert not torch.allclose(after[0], logits[0]) and torch.allclose(after[1], logits[1], atol=1e-6)
    with pytest.raises(ValueError, match="d_norm"):
        GANConfig(d_norm="layer")
    with pytest.raises(ValueError, match="class_input"):
        GANConfig(class_input="film")


def test_bad_training_configs_are_refused():
    with pytest.raises(ValueError, match="unknown dataset"):
        GANTrainConfig(dataset="mnist")
    with pytest.raises(ValueError, match="classes"):
        GANTrainConfig(classes=(3, 10))
    with pytest.raises(ValueError, match="batch_size"):
        GANTrainConfig(batch_size=1)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("gan-run")
    return run, train_gan(TINY, run, progress=False)


def test_resume_after_a_stop_equals_an_uninterrupted_run(whole, tmp_path):
    assert_resume_is_exact(train_gan, TINY, whole[0], tmp_path, timing=TIMING)


def test_the_run_folder(whole):
    run, summary = whole
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["d_loss"]) and math.isfinite(r["g_loss"]) for r in records)
    for name in ("loss.png", "samples/step_000002.png", "samples/step_000004.png", "model/config.json"):
        assert (run / name).is_file(), name
    assert Image.open(run / "samples/step_000004.png").size[1] > 10 * 64  # a row per class
    meta = json.loads((run / "model/config.json").read_text())
    assert meta["kind"] == "gan" and meta["dataset"] == "fashion-mnist" and meta["class_names"][8] == "bag"
    assert meta["gan"]["z_dim"] == TINY.gan.z_dim and meta["training"]["steps"] == 4
    states = load_checkpoint(run / "model")[0]
    assert list(states) == ["generator"]  # the EMA weights alone, BatchNorm statistics recomputed for them
    ema = load_checkpoint(run / "checkpoints/step-00000004")[0]["ema_generator"]
    assert all(torch.equal(value, ema[key]) for key, value in states["generator"].items()
               if not key.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert not torch.equal(states["generator"]["project_norm.running_var"], ema["project_norm.running_var"])
    assert summary["saved"] == str(run / "model")


def test_the_folder_loads_and_samples_by_seed(whole):
    run, _ = whole
    gan = GANGenerator.from_folder(run / "model")
    assert gan.name == "model" and gan.meta["kind"] == "gan" and gan.label("a photo of a bag") == gan.label("bag") == 8
    described = gan.describe()
    assert described["kind"] == "gan" and described["parameters"] > 0 and described["dtype"] == "float32"
    batch = gan.generate("bag", num_images=3, seed=5, output="tensor")
    assert batch.shape == (3, 1, 32, 32) and batch.dtype == torch.float32 and batch.abs().max() <= 1
    same = lambda a, b: torch.allclose(a, b, atol=1e-6)  # noqa: E731  (a batch may round otherwise)
    assert same(gan.generate("a photo of a bag", seed=7, output="tensor")[0], batch[2])  # seed 5 + 2
    assert torch.equal(gan.generate(class_labels=[8], num_images=3, seed=5, output="tensor"), batch)
    mixed = gan.generate(["bag", "trouser"], num_images=2, seed=0, output="tensor")  # prompt-major
    assert same(mixed[2], gan.generate("trouser", seed=2, output="tensor")[0])
    images = gan.generate(["sneaker", ""], num_images=2)  # "": a class drawn from each image's seed
    assert len(images) == 4 and all(isinstance(im, Image.Image) and im.size == (32, 32) for im in images)
    assert torch.equal(gan.generate("", seed=3, output="tensor"), gan.generate("", seed=3, output="tensor"))
    truncated = gan.generate("bag", num_images=3, seed=5, output="tensor", truncation=0.5)
    assert truncated.shape == batch.shape and not torch.equal(truncated, batch)
    checkpoint = GANGenerator.from_folder(run / "checkpoints/step-00000004")  # a checkpoint: its EMA weights
    assert same(checkpoint.generate("bag", seed=5, output="tensor"), batch[:1])
    doubled = GANGenerator.from_folder(run / "model", dtype=torch.float64)
    assert doubled.dtype == torch.float64 and doubled.generate("bag", output="tensor").dtype == torch.float32
    assert gan.to(dtype=torch.float64) is gan and gan.dtype == torch.float64


def test_truncation_redraws_only_the_outliers():
    plain = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    z = truncated_normal(1000, 0.5, torch.Generator().manual_seed(0))
    assert z.abs().max() <= 0.5
    within = plain.abs() <= 0.5
    assert torch.equal(z[within], plain[within])
    assert torch.equal(truncated_normal(1000, math.inf, torch.Generator().manual_seed(0)), plain)


def test_bad_prompts_and_labels_are_refused(whole):
    run, _ = whole
    gan = GANGenerator.from_folder(run / "model")
    with pytest.raises(ValueError, match="knows only the prompts.*trouser"):
        gan.generate("a photo of a cat")
    for labels in ([10], [-1], [1.5], [True], []):
        with pytest.raises(ValueError, match="class_labels must be whole numbers in 0..9"):
            gan.generate(class_labels=labels)
    with pytest.raises(ValueError, match="not both"):
        gan.generate("bag", class_labels=[8])
    with pytest.raises(ValueError, match="truncation"):
        gan.generate("bag", truncation=0)
    with pytest.raises(ValueError, match="output"):
        gan.generate("bag", output="latent")
    with pytest.raises(ValueError, match="num_images"):
        gan.generate("bag", num_images=0)
    with pytest.raises(CheckpointError, match="does not hold a GAN"):
        GANGenerator.from_folder("models/autoencoders/fmnist-kl-f4")
    unconditional = GANGenerator(Generator(replace(TINY.gan, conditioning="none")), [])
    assert unconditional.generate(num_images=2, output="tensor").shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.generate("bag")


def test_a_conditional_gan_overfits_a_few_examples(tmp_path):
    """8 images of two classes (trouser, bag): each class's samples land near that class's images,
    far nearer than the two classes' images are to each other; and they differ with z, spread
    over several of its images (a generator that ignores z, the class concatenated to z in its
    input, made samples of a class 0.1x as far apart as the class's images, all near one)."""
    steps = 200  # with 5x the learning rate and beta1 = 0: the preset's Adam needs ~250 steps to get as close
    config = replace(TINY, gan=replace(TINY.gan, z_dim=32, base_channels=16, d_base_channels=16), classes=(1, 8),
                     limit=8, steps=steps, lr=1e-3, betas=(0.0, 0.9), ema_decay=0.9, log_every=steps,
                     sample_every=steps, checkpoint_every=steps)
    images, labels = training_images(config)
    assert sorted(set(labels.tolist())) == [1, 8]
    train_gan(config, tmp_path, progress=False)
    gan = GANGenerator.from_folder(tmp_path / "model")
    rms = lambda a, b: torch.cdist(a.flatten(1), b.flatten(1)) / math.sqrt(a[0].numel())  # noqa: E731
    between = rms(images[labels == 1], images[labels == 8]).mean().item()  # about 0.68
    for label in (1, 8):
        samples = gan.generate(class_labels=[label], num_images=16, output="tensor")
        distance = rms(samples, images)  # (16, 8)
        nearest_own = distance[:, labels == label].min(dim=1).values
        nearest_other = distance[:, labels != label].min(dim=1).values
        assert (nearest_own < nearest_other).float().mean() >= 0.9, label
        assert nearest_own.mean() < 0.65 * between, (label, nearest_own.mean().item(), between)
        own = images[labels == label]
        spread = lambda x: rms(x, x).sum().item() / (len(x) * (len(x) - 1))  # noqa: E731  (mean over pairs)
        assert spread(samples) > 0.4 * spread(own), (label, spread(samples), spread(own))  # ~0.7x; collapsed ~0.1x
        nearest = distance[:, labels == label].argmin(dim=1)
        assert len(set(nearest.tolist())) >= 2, label  # not all near one image


def test_the_command_trains_one(tmp_path, capsys):
    assert main(["train-gan", "--preset", "tiny", "--out", str(tmp_path), "--steps", "2", "--set",
                 "sample_every=1"]) == 0
    assert "done:" in capsys.readouterr().out and (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "samples" / "step_000001.png").is_file()
