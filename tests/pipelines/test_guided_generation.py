"""Classifier guidance, CLIP guidance and best-of-N reranking through generate() and the command
line, on the shipped fashion-mnist model with a tiny classifier and a tiny random CLIP: scale 0
is plain generation, guidance changes the images, reranking keeps the candidate CLIP scores
highest, and bad input (a classifier for another latent space, an unknown class, reranking a
class-conditioned model without a CLIP) gets a clear error."""

from dataclasses import replace

import pytest
import torch
from PIL import Image

from ldmkit import Pipeline
from ldmkit.apps.cli import main
from ldmkit.data.fashion_mnist import CLASS_NAMES
from ldmkit.model import LatentDiffusionConfig, ModelParts
from ldmkit.model.classifier import load_latent_classifier
from ldmkit.model.clip import CLIP
from ldmkit.nets import UNET_PRESETS, make_net
from ldmkit.nets.clip import SmallCLIP
from ldmkit.train.clip_config import TINY_CLIP
from ldmkit.train.noisy_classifier import train_noisy_classifier
from ldmkit.train.noisy_classifier_config import NOISY_CLASSIFIER_PRESETS
from ldmkit.utils.images import read_png_metadata

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = dict(steps=2, seed=3, output="latent")
BAG = "a photo of a bag"


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained("fashion-mnist-f4")


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("classifier")
    train_noisy_classifier(replace(NOISY_CLASSIFIER_PRESETS["tiny"], steps=2), run, progress=False)
    return run / "model"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    torch.manual_seed(0)
    clip = CLIP.from_small_clip(SmallCLIP(TINY_CLIP), name="tiny-clip")
    folder = clip.save_pretrained(tmp_path_factory.mktemp("clip") / "tiny-clip")
    return CLIP.from_pretrained(folder)


@pytest.mark.parametrize("guidance", [0.0, 1.0, 3.0])  # unconditional (the paper's setting), conditional, + CFG
def test_classifier_guidance_steers_every_kind_of_model(pipe, classifier_folder, guidance):
    plain = pipe.generate(BAG, num_images=2, guidance=guidance, **SETTINGS)
    off = pipe.generate(BAG, num_images=2, guidance=guidance, classifier=classifier_folder, classifier_scale=0.0,
                        **SETTINGS)
    guided = pipe.generate(BAG, num_images=2, guidance=guidance, classifier=classifier_folder, classifier_scale=30.0,
                           **SETTINGS)
    assert torch.equal(off, plain)
    assert guided.isfinite().all() and (guided - plain).abs().max() > 1e-3


def test_an_empty_prompt_with_labels_is_the_unconditional_model_steered(pipe, classifier_folder):
    classifier = load_latent_classifier(classifier_folder)
    both = pipe.generate("", classifier=classifier, classifier_labels=[8, 3], classifier_scale=30.0, **SETTINGS)
    alone = pipe.generate("", classifier=classifier, classifier_labels=[8], classifier_scale=30.0, **SETTINGS)
    assert both.shape[0] == 2 and torch.allclose(both[:1], alone, atol=1e-5)  # image k: seed + k, its own label
    other = pipe.generate("", classifier=classifier, classifier_labels=[3], classifier_scale=30.0, **SETTINGS)
    assert not torch.allclose(other, alone)


def test_classifier_errors(pipe, classifier_folder):
    with pytest.raises(ValueError, match="names none of them"):
        pipe.generate("a photo of a cat", classifier=classifier_folder, **SETTINGS)
    with pytest.raises(ValueError, match=r"whole numbers in 0\.\.9"):
        pipe.generate(BAG, classifier=classifier_folder, classifier_labels=[10], **SETTINGS)
    with pytest.raises(ValueError, match="one classifier label per prompt"):
        pipe.generate([BAG, BAG], classifier=classifier_folder, classifier_labels=[1], **SETTINGS)
    with pytest.raises(ValueError, match="need a classifier"):
        pipe.generate("", classifier_labels=[1], **SETTINGS)
    shapes = Pipeline.from_pretrained("shapes")
    with pytest.raises(ValueError, match="another latent space"):
        shapes.generate("a red circle in the top left", classifier=classifier_folder, **SETTINGS)


def test_reranking_keeps_the_candidate_clip_scores_highest(pipe, clip):
    prompts = [BAG, "a photo of a sneaker"]
    best = pipe.generate(prompts, num_images=2, rerank=3, clip=clip, **SETTINGS)
    candidates = pipe.generate(prompts, num_images=6, **SETTINGS)                 # image k's: 3k, 3k + 1, 3k + 2
    scores = clip.scores(pipe.decode(candidates), [p for p in prompts for _ in range(6)]).view(4, 3)
    picked = torch.arange(4) * 3 + scores.argmax(1)
    assert torch.equal(best, candidates[picked])
    assert not torch.equal(best, candidates[::3])  # a random CLIP still prefers some other candidate


def test_reranking_and_clip_guidance_errors(pipe, clip):
    class_model = Pipeline(ModelParts(
        make_net(replace(UNET_PRESETS["tiny-uncond"], num_classes=11)), pipe.autoencoder,
        LatentDiffusionConfig(net=replace(UNET_PRESETS["tiny-uncond"], num_classes=11), conditioning="class"),
        class_names=list(CLASS_NAMES), name="tiny-class"))
    with pytest.raises(ValueError, match="reranking a class-conditioned model needs a CLIP"):
        class_model.generate(class_labels=[8], rerank=2, **SETTINGS)
    assert class_model.generate(class_labels=[8], rerank=2, clip=clip, **SETTINGS).shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="rerank must be a whole number >= 1"):
        pipe.generate(BAG, rerank=0, clip=clip, **SETTINGS)
    with pytest.raises(ValueError, match="reranking scores images against their prompts"):
        pipe.generate("", rerank=2, clip=clip, **SETTINGS)
    with pytest.raises(ValueError, match="CLIP guidance steers towards a prompt"):
        pipe.generate("", clip_guidance=10.0, clip=clip, **SETTINGS)


def test_clip_guidance_changes_the_images_and_scale_0_does_not(pipe, clip):
    plain = pipe.generate(BAG, num_images=2, **SETTINGS)
    assert torch.equal(pipe.generate(BAG, num_images=2, clip=clip, clip_guidance=0.0, **SETTINGS), plain)
    guided = pipe.generate(BAG, num_images=2, clip=clip, clip_guidance=500.0, sampler="euler", **SETTINGS)
    unguided = pipe.generate(BAG, num_images=2, sampler="euler", **SETTINGS)
    assert guided.isfinite().all() and (guided - unguided).abs().max() > 1e-3


def test_the_generate_command_takes_the_new_options(tmp_path, classifier_folder, clip, capsys):
    clip_folder = tmp_path / "clip"
    clip.save_pretrained(clip_folder)
    out = tmp_path / "out"
    assert main(["generate", BAG, "--model", "fashion-mnist-f4", "--num-images", "2", "--steps", "2", "--out", str(out),
                 "--classifier", str(classifier_folder), "--classifier-scale", "5", "--rerank", "2",
                 "--clip", str(clip_folder)]) == 0
    written = sorted(out.glob("0000*_seed*.png"))
    assert len(written) == 2 and Image.open(written[0]).size == (32, 32)
    text = read_png_metadata(written[0])
    assert text["rerank"] == "2" and text["classifier_scale"] == "5.0" and text["clip"] == str(clip_folder)
    assert main(["generate", BAG, "--clip", str(clip_folder), "--out", str(out)]) == 2
    assert "--clip is used by --rerank" in capsys.readouterr().err


def test_the_evaluate_command_reports_the_clip_score(tmp_path, clip, classifier_folder):
    import json

    clip_folder = clip.save_pretrained(tmp_path / "clip")
    out = tmp_path / "result.json"
    assert main(["evaluate", "--model", "shapes", "--size", "1", "--steps", "1", "--clip", str(clip_folder),
                 "--rerank", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert all(0 <= result[split]["clip_score"] <= 100 for split in ("seen", "held_out"))
    assert result["settings"]["rerank"] == 2 and result["settings"]["clip"] == "tiny-clip"
    assert main(["evaluate", "--model", "shapes", "--size", "1", "--classifier-scale", "2"]) == 2  # no classifier


def test_the_evaluate_command_sends_a_family_model_to_the_family_table(capsys):
    assert main(["evaluate", "--model", "models/fashion-mnist-gan", "--size", "1"]) == 2
    assert "use python -m benchmarks.family_table --dataset fashion-mnist" in capsys.readouterr().err


def test_the_shipped_clip_names_fresh_renders_and_fashion_classes():
    """clip-small by name: caption retrieval of fresh shapes renders among all 48 captions, and
    zero-shot Fashion-MNIST on a slice of the test set (its card: 100% and 86.8% on all of it)."""
    from ldmkit.data import fashion_mnist, load_fashion_mnist, shapes

    clip = CLIP.from_pretrained("clip-small")
    captions = [shapes.caption(*c) for c in shapes.COMBINATIONS]
    gen = torch.Generator().manual_seed(123)
    renders = torch.stack([shapes.render(*c, gen=gen) for c in shapes.COMBINATIONS])
    retrieved = (clip.embed_pixels(renders) @ clip.encode_text(captions).T).argmax(1)
    assert (retrieved == torch.arange(48)).float().mean() >= 0.95
    images, labels = load_fashion_mnist("test", limit=300)
    classes = clip.encode_text([fashion_mnist.caption(y) for y in range(10)])
    predicted = (clip.embed_pixels(images) @ classes.T).argmax(1)
    assert (predicted == labels).float().mean() >= 0.75


def test_the_shipped_noisy_classifier_reads_clean_and_noisy_latents():
    """models/classifiers/fashion-mnist-f4 by name: accuracy on test latents falls from its card's 87.6%
    at t = 0 towards chance as t grows."""
    from ldmkit.data import load_fashion_mnist

    classifier = load_latent_classifier("fashion-mnist-f4")
    pipe = Pipeline.from_pretrained("fashion-mnist-f4")
    classifier.check_model(pipe.autoencoder, pipe.schedule)
    images, labels = load_fashion_mnist("test", limit=300)
    with torch.no_grad():
        z0 = pipe.autoencoder.to_latent(images)
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
        accuracy = {}
        for t in (0, 999):
            a = pipe.schedule.alpha_bar[t]
            zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
            logits = classifier.net(zt, torch.full((len(zt),), t))
            accuracy[t] = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy[0] >= 0.8 and accuracy[999] <= 0.3
