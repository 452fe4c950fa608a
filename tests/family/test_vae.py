"""The VAE of the generative family: its ELBO's terms equal torch.distributions' (closed-form KL,
Gaussian log-likelihood), its decoder is the GAN's generator, a VAE overfits a few examples,
a run resumed equals an uninterrupted one, the saved folder and a KL first stage's prior sample
by seed, bad settings are refused, the command trains one."""

import json
import math
from dataclasses import replace

import pytest
import torch
from resume_checks import assert_resume_is_exact
from torch.distributions import Normal, kl_divergence

from ldmkit.apps.cli import main
from ldmkit.family import VAEGenerator
from ldmkit.family.gan_networks import Generator
from ldmkit.family.vae import save_vae_pointer
from ldmkit.family.vae_networks import VAE, VAEConfig
from ldmkit.pipelines import Pipeline
from ldmkit.storage import CheckpointError
from ldmkit.train.gan import training_images
from ldmkit.train.vae import TIMING, train_vae
from ldmkit.train.vae_config import VAE_PRESETS, VAETrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = VAE_PRESETS["tiny"]


def test_the_elbo_terms_equal_torch_distributions():
    torch.manual_seed(0)
    vae = VAE(TINY.vae).train()
    with torch.no_grad():
        vae.prior_means.normal_()  # p(z | y) = N(m_y, I), each class its own mean
    x, y = torch.rand(5, 1, 32, 32) * 2 - 1, torch.tensor([0, 3, 3, 9, 1])
    losses = vae.losses(x, y, torch.Generator().manual_seed(1))
    mu, logvar = vae.encoder(x, y)
    prior = Normal(vae.prior_means[y], 1.0)
    expected_kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), prior).sum(dim=1).mean()
    assert torch.allclose(losses["kl"], expected_kl, rtol=1e-5)
    sigma = (x - losses["reconstruction"]).pow(2).mean().sqrt()  # its maximum-likelihood value
    assert torch.allclose(losses["sigma"], sigma)
    expected_nll = -Normal(losses["reconstruction"], sigma).log_prob(x).flatten(1).sum(dim=1).mean()
    assert torch.allclose(losses["nll"], expected_nll, rtol=1e-5)
    # the reparameterised z is the generator's: the same draw, the same terms
    again = vae.losses(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(again["reconstruction"], losses["reconstruction"])


def test_the_decoder_is_the_gans_generator_and_the_encoder_takes_the_class():
    config = VAEConfig(z_dim=8, base_channels=8)
    vae = VAE(config)
    gan_generator = Generator(config.decoder_config())
    assert vae.decoder.state_dict().keys() == gan_generator.state_dict().keys()
    x = torch.rand(2, 1, 32, 32)
    mu, logvar = vae.encoder(x, torch.tensor([0, 0]))
    assert mu.shape == logvar.shape == (2, 8)
    assert not torch.allclose(vae.encoder(x, torch.tensor([5, 5]))[0], mu)
    assert VAE(replace(config, conditioning="none")).encoder(x)[0].shape == (2, 8)
    with pytest.raises(ValueError, match="class_labels"):
        vae.encoder(x)
    with pytest.raises(ValueError, match="conditioning"):
        VAEConfig(conditioning="text")
    with pytest.raises(ValueError, match="power of 2"):
        VAEConfig(image_size=48)
    with pytest.raises(ValueError, match="kl_weight"):
        VAETrainConfig(kl_weight=-1)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("vae-run")
    return run, train_vae(TINY, run, progress=False)


def test_resume_after_a_stop_equals_an_uninterrupted_run(whole, tmp_path):
    assert_resume_is_exact(train_vae, TINY, whole[0], tmp_path, timing=TIMING)


def test_the_run_folder_and_the_saved_vae_sample_by_seed(whole):
    run, summary = whole
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["nll"]) and r["kl"] >= 0 for r in records)
    for name in ("loss.png", "samples/step_000002.png", "samples/step_000004.png", "model/config.json"):
        assert (run / name).is_file(), name
    vae = Pipeline.from_pretrained(run / "model")
    assert isinstance(vae, VAEGenerator) and vae.conditional and vae.describe()["kind"] == "vae"
    batch = vae.generate(["bag", "a photo of a trouser"], num_images=3, seed=4, output="tensor")
    assert batch.shape == (6, 1, 32, 32) and batch.min() >= -1 and batch.max() <= 1
    alone = vae.generate("a photo of a trouser", num_images=1, seed=7, output="tensor")
    assert torch.allclose(alone[0], batch[3], atol=1e-6)  # image 3 of the batch: seed 4 + 3
    cooler = vae.generate("bag", num_images=3, seed=4, output="tensor", temperature=0.5)
    assert not torch.allclose(cooler, batch[:3])
    # z ~ N(m_y, T^2 I): as T -> 0 every sample is the decoded class mean
    assert vae.prior_means.shape == (10, 8) and vae.prior_means.abs().sum() > 0  # trained away from 0
    frozen = vae.generate("bag", num_images=2, seed=0, output="tensor", temperature=1e-6)
    mean = vae.decoder(vae.prior_means[8:9], torch.tensor([8]))
    assert torch.allclose(frozen, mean.expand(2, -1, -1, -1), atol=1e-4)
    # a run's checkpoint loads too, its statistics recomputed as the finished model's were
    checkpoint = VAEGenerator.from_folder(run / "checkpoints" / "step-00000004")
    assert torch.allclose(checkpoint.generate("bag", num_images=3, seed=4, output="tensor"), batch[:3], atol=1e-6)


def test_bad_settings_are_refused(whole):
    vae = VAEGenerator.from_folder(whole[0] / "model")
    with pytest.raises(ValueError, match="temperature"):
        vae.generate("bag", temperature=0)
    with pytest.raises(ValueError, match="cat"):
        vae.generate("a photo of a cat")
    with pytest.raises(ValueError, match="class_labels must be whole numbers in 0..9"):
        vae.generate(class_labels=[10])
    with pytest.raises(ValueError, match="num_images"):
        vae.generate("bag", num_images=0)


def test_a_kl_first_stage_samples_its_prior(tmp_path):
    folder = save_vae_pointer(tmp_path / "kl-prior", "models/autoencoders/fmnist-kl-f4", "fashion-mnist")
    prior = Pipeline.from_pretrained(folder)
    assert isinstance(prior, VAEGenerator) and not prior.conditional and prior.latent_shape == (4, 8, 8)
    images = prior.generate(num_images=3, seed=2, output="tensor")
    assert images.shape == (3, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert torch.allclose(prior.generate(num_images=1, seed=4, output="tensor")[0], images[2], atol=1e-5)
    with pytest.raises(ValueError, match="unconditional VAE"):
        prior.generate("bag")
    save_vae_pointer(tmp_path / "vq-prior", "models/autoencoders/fmnist-vq-f4", "fashion-mnist")
    with pytest.raises(CheckpointError, match="needs a KL one"):
        VAEGenerator.from_folder(tmp_path / "vq-prior")


def test_a_vae_overfits_a_few_examples(tmp_path):
    """8 images of two classes, the KL lightly weighted: the reconstructions come within a small
    error of them (the likelihood term learned), and the calibrated sigma_x is that error."""
    config = replace(TINY, vae=VAEConfig(z_dim=8, base_channels=16), classes=(1, 8), limit=8, steps=150,
                     lr=3e-3, kl_weight=0.05, log_every=150, sample_every=150, checkpoint_every=150)
    summary = train_vae(config, tmp_path, progress=False)
    images = training_images(config)[0]
    spread = (images - images.mean(dim=0)).pow(2).mean().item()  # what the mean image would score
    assert summary["mse"] < 0.1 * spread, (summary, spread)
    assert summary["sigma"] == pytest.approx(math.sqrt(summary["mse"]), rel=1e-5)


def test_the_command_trains_one(tmp_path, capsys):
    main(["train-vae", "--preset", "tiny", "--out", str(tmp_path / "run"), "--set", "kl_weight=0.5"])
    assert "done:" in capsys.readouterr().out
    meta = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert meta["kind"] == "vae" and meta["train"]["kl_weight"] == 0.5
