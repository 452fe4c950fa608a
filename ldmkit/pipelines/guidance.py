"""Guidance beyond classifier-free, and best-of-N, for a Pipeline (the maths: ldmkit.diffusion.
classifier_guidance):
- classifier guidance: a noisy latent classifier (ldmkit.model.classifier) steers each image
  towards a class, on a conditional model (with or without classifier-free guidance) or an
  unconditional one (the empty prompt, or guidance 0: the paper's setting);
- CLIP guidance: the gradient of the CLIP similarity of the decoded x0 estimate with the prompt;
- reranking: N candidates of each image, the one CLIP scores highest kept (DALL-E's recipe).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..diffusion.classifier_guidance import classifier_guidance, clip_guidance
from ..model.classifier import LatentClassifier, load_latent_classifier
from ..model.clip import CLIP, best_of

__all__ = ["CLIP", "best_of", "guidance_wrappers", "resolve_classifier", "resolve_clip"]

DEFAULT_CLIP = "clip-small"  # a text model's CLIP when none is given: knows the shapes and Fashion-MNIST captions
Wrapper = Callable[[Callable], Callable]


def resolve_classifier(pipe, classifier: LatentClassifier | str | Path) -> LatentClassifier:
    """A loaded classifier (or its folder) checked against the model's latent space and schedule."""
    if not isinstance(classifier, LatentClassifier):
        classifier = load_latent_classifier(classifier, pipe.device)
    classifier.check_model(pipe.autoencoder, pipe.schedule)
    return classifier


def resolve_clip(pipe, clip: CLIP | str | Path | None, purpose: str) -> CLIP:
    """The CLIP given (or its name / folder); for a text model, clip-small when none is given."""
    if clip is None:
        if pipe.config.conditioning != "text":
            raise ValueError(f"{purpose} a {pipe.config.conditioning}-conditioned model needs a CLIP: give clip= "
                             f"(e.g. {DEFAULT_CLIP!r}, a CLIP folder or a transformers CLIPModel folder)")
        clip = DEFAULT_CLIP
    return clip if isinstance(clip, CLIP) else CLIP.from_pretrained(clip, pipe.device)


def classifier_targets(classifier: LatentClassifier, prompts: Sequence[str],
                       labels: Sequence[int] | None) -> list[int]:
    """One class per prompt: `labels` when given (in range), else the class each prompt names."""
    if labels is None:
        return [classifier.label(prompt) for prompt in prompts]
    labels = list(labels)
    if len(labels) != len(prompts):
        raise ValueError(f"give one classifier label per prompt: {len(prompts)} prompt(s), {len(labels)} label(s)")
    count = len(classifier.class_names)
    bad = [k for k in labels if isinstance(k, bool) or int(k) != k or not 0 <= k < count]
    if bad:
        raise ValueError(f"classifier labels must be whole numbers in 0..{count - 1} ({classifier.name}'s classes "
                         f"{classifier.class_names}), got {bad}")
    return [int(k) for k in labels]


def guidance_wrappers(pipe, prompts: Sequence[str], classifier: LatentClassifier | None = None,
                      classifier_scale: float = 1.0, labels: Sequence[int] | None = None, clip: CLIP | None = None,
                      clip_scale: float = 0.0) -> Callable[[int, int], Wrapper | None]:
    """wrappers(start, count): the denoiser wrapper for images start .. start + count - 1 of `prompts`
    (one per image), None when neither guidance is on. labels: the classifier's class for each
    image (default: the class each prompt names)."""
    if classifier_scale < 0 or clip_scale < 0:
        raise ValueError(f"guidance scales must be >= 0, got classifier {classifier_scale}, CLIP {clip_scale}")
    targets = None
    if classifier is not None and classifier_scale > 0:
        targets = torch.tensor(labels if labels is not None else classifier_targets(classifier, prompts, None))
    texts = None
    if clip is not None and clip_scale > 0:
        if not all(prompts):
            raise ValueError("CLIP guidance steers towards a prompt: give a non-empty one for every image")
        texts = clip.encode_text(list(prompts))                                      # (N, E)

    def wrappers(start: int, count: int) -> Wrapper | None:
        if targets is None and texts is None:
            return None
        rows = slice(start, start + count)

        def wrap(denoise):
            if targets is not None:
                net = classifier.net
                model = lambda x_t, t: net(x_t.to(next(net.parameters()).dtype), t).float()
                denoise = classifier_guidance(denoise, model, targets[rows].to(pipe.device), pipe.schedule,
                                              classifier_scale)
            if texts is not None:
                denoise = clip_guidance(denoise, similarity(pipe, clip, texts[rows]), pipe.schedule, clip_scale)
            return denoise

        return wrap

    return wrappers


def similarity(pipe, clip: CLIP, texts: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """x0_hat (B, c, h, w) latents -> (B,) cosines of CLIP's embedding of their decoding with texts (B, E)."""
    dtype = next(pipe.autoencoder.parameters()).dtype

    def cosine(x0: torch.Tensor) -> torch.Tensor:
        images = pipe.autoencoder.from_latent(x0.to(dtype)).float()                # (B, C, H, W), about [-1, 1]
        return (clip.embed_pixels(images) * texts.to(images.device)).sum(-1)      # (B,)

    return cosine
