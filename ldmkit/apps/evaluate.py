"""`ldmkit evaluate`: measure a trained model by what it generates.

- fashion-mnist: the Frechet distance on the shipped classifier's features between generated
  images (an equal number per class prompt) and the 10,000 test images, next to the same distance
  for as many real training images (the floor: what a perfect generator would score with that
  sample size) and for their first-stage reconstructions (what the autoencoder alone costs);
  and class agreement, the share classified as the class in their prompt; and improved precision
  and recall (Kynkaanniemi et al. 2019, k = 3; metrics/precision_recall.py) on the same features,
  against as many real training images: precision, the share of generated images on the real
  images' manifold (fidelity), and recall, the share of real images on the generated images'
  manifold (diversity).
- shapes: the share of images whose colour, shape and quadrant all match the prompt, read off
  the pixels (data/shapes.read_attributes), on seen and on held-out combinations.
- speed: seconds per image at batch 1 and amortised over the evaluation's batches.
- with a CLIP (clip-small for text models, when it exists): the CLIP score of the images and their
  prompts (torchmetrics' CLIPScore: max(mean 100 cos, 0); metrics/clip_score.py). Reranking by the
  same CLIP raises it by construction: compare reranked models by the other measures.
Other generate() settings (classifier=, classifier_scale=, rerank=, ...) pass through.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch

from ..data import fashion_mnist, load_fashion_mnist, shapes
from ..family.loading import PARTS
from ..metrics import (
    classify,
    extrapolated_frechet_distance,
    feature_frechet_distance,
    load_fmnist_classifier,
    precision_recall,
)
from ..pipelines import Pipeline


def evaluate_fashion_mnist(pipe: Pipeline, per_class: int = 200, seed: int = 0, clip=None, **settings) -> dict:
    classifier = load_fmnist_classifier(device=pipe.device)
    test_features = shipped_test_features(str(pipe.device))
    real, _ = load_fashion_mnist("train", limit=10 * per_class)
    real_features = classify(classifier, real)[0]
    floor = real_data_floor(real_features, test_features)
    with torch.no_grad():  # what the first stage alone loses: its reconstructions of the same images
        rebuilt = pipe.decode(
            torch.cat([pipe.autoencoder.to_latent(x.to(pipe.device, pipe.dtype)) for x in real.split(250)])
        )
    first_stage = frechet_to_test(classifier, rebuilt, test_features)

    start = time.perf_counter()
    images = pipe.generate(fashion_mnist_prompts(), num_images=per_class, seed=seed, output="tensor",
                           **with_clip(settings, clip))
    seconds = time.perf_counter() - start
    scores = score_fashion_mnist_images(classifier, images, per_class, test_features, real_features)
    result = {
        "images": len(images),
        "frechet_distance": scores["frechet_distance"],
        "frechet_floor": floor["frechet_distance"],
        "frechet_first_stage": first_stage,
        # the small-sample bias extrapolated away (Chong & Forsyth 2020), of all images and of
        # each half apart (how much it moves with other images), and of as many real images
        "fd_inf": scores["fd_inf"],
        "fd_inf_halves": scores["fd_inf_halves"],
        "fd_inf_floor": floor["fd_inf"],
        "class_agreement": scores["class_agreement"],
        "class_agreement_by_class": scores["class_agreement_by_class"],
        "precision": scores["precision"],
        "recall": scores["recall"],
        "seconds_per_image_batched": seconds / len(images),
    }
    if clip is not None:
        result["clip_score"] = clip.score(images, [p for p in fashion_mnist_prompts() for _ in range(per_class)])
    return result


def load_for_evaluation(model: str | Path, device: str | torch.device = "cpu", autoencoder=None) -> Pipeline:
    """A model by name or folder, or a training run's checkpoint folder (its EMA weights), for
    scoring: FD against training time reads a run's checkpoints."""
    config = Path(model) / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("type") == "diffusion-run":
        from ..train.diffusion import pipeline_from_checkpoint

        return pipeline_from_checkpoint(model, torch.device(device))
    return Pipeline.from_pretrained(model, device=torch.device(device), autoencoder=autoencoder)


def fashion_mnist_prompts() -> list[str]:
    """The 10 class prompts, "a photo of a {class}", in label order."""
    return [fashion_mnist.caption(y) for y in range(10)]


def fashion_mnist_test_features(classifier) -> torch.Tensor:
    """The classifier's features of the 10,000 test images: what every distance is measured against."""
    return classify(classifier, load_fashion_mnist("test")[0])[0]


@functools.lru_cache(maxsize=2)
def shipped_test_features(device: str) -> torch.Tensor:
    """The shipped classifier's test features, computed once a process: sweeps evaluate many cells."""
    return fashion_mnist_test_features(load_fmnist_classifier(device=device))


def _fd_inf(features: torch.Tensor, test_features: torch.Tensor) -> float | None:
    """FD_inf, or None where the images are too few for it (no more than twice the feature width)."""
    try:
        return extrapolated_frechet_distance(features, test_features)
    except ValueError:
        return None


def frechet_to_test(classifier, images: torch.Tensor, test_features: torch.Tensor) -> float:
    """The Frechet distance of images in [-1, 1] to the test set, on the classifier's features."""
    return feature_frechet_distance(classify(classifier, images)[0], test_features)


def score_class_images(classifier, images: torch.Tensor, test_features: torch.Tensor, per_class: int) -> dict:
    """Frechet distance to the test set and class agreement of `per_class` images of each class
    prompt, in label order (as generate() returns them for fashion_mnist_prompts()), and their
    classifier features (N, 128) under "features"."""
    features, predicted = classify(classifier, images)
    hits = (predicted == torch.arange(10).repeat_interleave(per_class)).float()
    return {
        **frechet_scores(features, test_features, per_class),
        "class_agreement": hits.mean().item(),
        "class_agreement_by_class": dict(zip(fashion_mnist.CLASS_NAMES, hits.view(10, per_class).mean(1).tolist())),
        "features": features,
    }


def frechet_scores(features: torch.Tensor, test_features: torch.Tensor, per_prompt: int) -> dict:
    """FD and FD_inf of the features of `per_prompt` images of each prompt (prompt-major) to the
    test features, and FD_inf of each half apart (how much it moves with other images), each half
    taking half of every prompt's images."""
    order = torch.arange(len(features)).view(-1, per_prompt)
    halves = [features[order[:, : per_prompt // 2].flatten()], features[order[:, per_prompt // 2 :].flatten()]]
    return {"frechet_distance": feature_frechet_distance(features, test_features),
            "fd_inf": _fd_inf(features, test_features),
            "fd_inf_halves": [_fd_inf(half, test_features) for half in halves]}


def score_fashion_mnist_images(classifier, images: torch.Tensor, per_class: int, test_features: torch.Tensor,
                               real_features: torch.Tensor) -> dict:
    """score_class_images' measures of `per_class` images of each class prompt (label order), with
    improved precision and recall (k = 3) against `real_features`: real training images, as many as
    the images scored, as precision and recall depend on N."""
    scores = score_class_images(classifier, images, test_features, per_class)
    fidelity_diversity = precision_recall(real_features, scores["features"], k=3)
    return {**scores, "precision": fidelity_diversity["precision"], "recall": fidelity_diversity["recall"]}


def real_data_floor(real_features: torch.Tensor, test_features: torch.Tensor) -> dict:
    """FD and FD_inf of real images to the test set: what a perfect generator would score with
    as many images."""
    return {"frechet_distance": feature_frechet_distance(real_features, test_features),
            "fd_inf": _fd_inf(real_features, test_features)}


def shapes_holdout(meta: dict) -> set[tuple[str, str, str]]:
    """The shapes combinations a model folder's training left out, where its config.json records
    them: a diffusion run under train.data.holdout, the family's trainers (DALL-E, the unCLIP
    prior) under train.shapes_holdout."""
    train = meta.get("train") or {}
    recorded = [*(train.get("data") or {}).get("holdout", []), *train.get("shapes_holdout", [])]
    return {tuple(c) for c in recorded}


def model_holdout(model) -> set[tuple[str, str, str]]:
    """shapes_holdout of a loaded model and of the models it is made of (unCLIP's prior and
    decoder, a cascade's base and upsampler): a combination one part never saw is unseen by all."""
    parts = [getattr(model, name) for name in PARTS.get(getattr(model, "kind", None), ())]
    return set().union(*(shapes_holdout(part.meta) for part in [model, *parts]))


def evaluate_shapes(pipe: Pipeline, per_combination: int = 25, seed: int = 0, clip=None, **settings) -> dict:
    holdout = model_holdout(pipe)
    results = {}
    start, count = time.perf_counter(), 0
    for split, combos in (("seen", [c for c in shapes.COMBINATIONS if c not in holdout]),
                          ("held_out", [c for c in shapes.COMBINATIONS if c in holdout])):
        if not combos:
            continue
        n = per_combination if split == "seen" else 4 * per_combination
        prompts = [shapes.caption(*c) for c in combos]
        images = pipe.generate(prompts, num_images=n, seed=seed, output="tensor", **with_clip(settings, clip))
        count += len(images)
        expected = [c for c in combos for _ in range(n)]
        results[split] = {"images": len(images), **shapes.attribute_accuracy(images, expected)}
        if clip is not None:
            results[split]["clip_score"] = clip.score(images, [p for p in prompts for _ in range(n)])
    results["seconds_per_image_batched"] = (time.perf_counter() - start) / count
    return results


def with_clip(settings: dict, clip) -> dict:
    """generate()'s settings, with the CLIP for reranking or CLIP guidance where they ask for one."""
    wants = settings.get("rerank", 1) > 1 or settings.get("clip_guidance", 0)
    return {**settings, "clip": clip} if wants and clip is not None and "clip" not in settings else settings


def seconds_per_image(pipe: Pipeline, prompt: str, repeats: int = 5, **settings) -> float:
    """Latency of one image alone (after one warm-up run), the median of `repeats`."""
    pipe.generate(prompt, **settings)
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        pipe.generate(prompt, seed=k, **settings)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def evaluate(pipe: Pipeline, size: int | None = None, seed: int = 0, clip=None, **settings) -> dict:
    """Dispatch on the dataset the model was trained on; settings: steps, sampler, guidance (and
    any other of generate()'s); clip: a CLIP scoring the images (and reranking, if asked)."""
    dataset = pipe.meta.get("dataset")
    if dataset == "fashion-mnist":
        result = evaluate_fashion_mnist(pipe, per_class=size or 200, seed=seed, clip=clip, **settings)
        prompt = fashion_mnist.caption(7)
    elif dataset == "shapes":
        result = evaluate_shapes(pipe, per_combination=size or 25, seed=seed, clip=clip, **settings)
        prompt = shapes.caption("red", "circle", "top left")
    else:
        raise ValueError(
            "ldmkit evaluate knows the fashion-mnist and shapes models; "
            f"this one was trained on {dataset!r}"
        )
    result["seconds_per_image_alone"] = seconds_per_image(pipe, prompt, **with_clip(settings, clip))
    steps, sampler, guidance = pipe.resolve_settings(
        settings.get("steps"), settings.get("sampler"), settings.get("guidance")
    )
    result["settings"] = {"steps": steps, "sampler": sampler, "guidance": guidance,
                          "seed": seed, "torch_threads": torch.get_num_threads(), "device": str(pipe.device)}
    result["settings"] |= {k: getattr(v, "name", str(v)) if k == "classifier" else v for k, v in settings.items()
                           if k not in ("steps", "sampler", "guidance")}
    if clip is not None:
        result["settings"]["clip"] = clip.name
    return result
