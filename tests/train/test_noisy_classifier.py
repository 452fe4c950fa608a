"""The noisy latent classifier: its network reads x_t and t through the UNet's encoder half, a run
stopped and resumed equals an uninterrupted one bit for bit, the run logs accuracy against t and
writes a classifier folder that knows its latent space, schedule and classes; models whose
latents or noise levels differ are refused; the command line trains one."""

import json
from dataclasses import replace

import pytest
import torch
from resume_checks import assert_resume_is_exact

from ldmkit.apps.cli import main
from ldmkit.diffusion import ScheduleConfig, make_schedule
from ldmkit.model.classifier import load_latent_classifier
from ldmkit.model.folder import load_autoencoder, resolve_repo_path
from ldmkit.nets.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from ldmkit.storage import CheckpointError
from ldmkit.train.noisy_classifier import train_noisy_classifier
from ldmkit.train.noisy_classifier_config import NOISY_CLASSIFIER_PRESETS, NoisyClassifierTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = NOISY_CLASSIFIER_PRESETS["tiny"]


def test_the_network_maps_noisy_latents_and_timesteps_to_logits():
    torch.manual_seed(0)
    net = NoisyClassifier(TINY.classifier)
    with torch.no_grad():  # off the zero init of the ResBlocks' last convs, through which t enters
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    x = torch.randn(3, 4, 8, 8)
    logits = net(x, torch.tensor([0.0, 500.5, 999.0]))
    assert logits.shape == (3, 10)
    assert not torch.allclose(net(x, 0.0), net(x, 999.0))  # t matters
    assert torch.allclose(net(x[:1], 250.0), net(x, 250.0)[:1], atol=1e-5)  # samples do not interact
    with pytest.raises(ValueError, match="x_t and t only"):
        NoisyClassifierConfig(replace(TINY.classifier.encoder, context_dim=32))
    with pytest.raises(ValueError, match="channels"):
        net(torch.randn(1, 3, 8, 8), 1.0)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("classifier-run")
    return run, train_noisy_classifier(TINY, run, progress=False)


def test_resume_after_a_stop_equals_an_uninterrupted_run(whole, tmp_path):
    assert_resume_is_exact(train_noisy_classifier, TINY, whole[0], tmp_path)


def test_the_run_logs_accuracy_against_t_and_saves_a_classifier(whole):
    run, summary = whole
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    measured = [r for r in records if "accuracy_t0" in r]
    assert [r["step"] for r in measured] == [2, 4]
    assert all(0 <= r[f"accuracy_t{t}"] <= 1 for r in measured for t in TINY.eval_timesteps)
    assert set(summary["accuracy_by_t"]) == set(TINY.eval_timesteps)
    for name in ("loss.png", "accuracy_vs_t.png", "model/config.json"):
        assert (run / name).is_file(), name
    for folder in (run / "model", run / "checkpoints" / "step-00000002"):  # a checkpoint is a classifier too
        classifier = load_latent_classifier(folder)
        assert classifier.class_names[7] == "sneaker" and classifier.label("a photo of a sneaker") == 7
        assert classifier.label("bag") == 8 and not any(p.requires_grad for p in classifier.net.parameters())
        with pytest.raises(ValueError, match="names none of them"):
            classifier.label("a photo of a cat")


def test_models_of_another_latent_space_or_schedule_are_refused(whole):
    run, _ = whole
    classifier = load_latent_classifier(run / "model")
    own = load_autoencoder(resolve_repo_path(TINY.autoencoder))
    classifier.check_model(own, make_schedule())  # the space it was trained in
    classifier.check_model(load_autoencoder(resolve_repo_path("models/autoencoders/fmnist-kl-f4-gan-decoder")),
                           make_schedule())  # another decoder, the same encoder: the same latent space
    with pytest.raises(ValueError, match="another latent space.*4-channel latents of 1-channel images.*3-channel"):
        classifier.check_model(load_autoencoder(resolve_repo_path("models/autoencoders/shapes-kl-f4")),
                               make_schedule())
    with pytest.raises(ValueError, match="another latent space.*probe"):
        classifier.check_model(load_autoencoder(resolve_repo_path("models/autoencoders/fmnist-kl-f2")),
                               make_schedule())
    with pytest.raises(ValueError, match="another noise schedule"):
        classifier.check_model(own, make_schedule(ScheduleConfig(kind="linear", beta_start=1e-4, beta_end=0.02)))
    with pytest.raises(CheckpointError, match="noisy latent classifier"):
        load_latent_classifier(resolve_repo_path("models/autoencoders/fmnist-kl-f4"))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown dataset"):
        NoisyClassifierTrainConfig(dataset="mnist")
    with pytest.raises(ValueError, match="eval_timesteps"):
        NoisyClassifierTrainConfig(eval_timesteps=(0, 1000))


def test_the_command_trains_one(tmp_path, capsys):
    assert main(["train-noisy-classifier", "--preset", "tiny", "--out", str(tmp_path), "--steps", "2",
                 "--set", "eval_every=1"]) == 0
    assert "done:" in capsys.readouterr().out and (tmp_path / "model" / "model.safetensors").is_file()
