"""`ldmkit evaluate-tasks`: img2img and inpainting on held-out Fashion-MNIST test images.

- img2img at a low strength (0.3) with the image's own class as prompt: how close the result
  stays to the input (PSNR, SSIM); at strength 1.0 with *another* class as prompt: the share
  classified as the prompt's class (the result follows the prompt, not the input);
- inpainting with the right half masked and the image's own class as prompt: the share of
  completed images classified as that class, and whether every pixel outside the mask equals
  the input's.
An inpainting model (9-channel UNet) does only the inpainting part: it has no text-to-image mode.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from ..data import fashion_mnist, load_fashion_mnist
from ..metrics import classify, load_fmnist_classifier
from ..metrics.image_quality import psnr, ssim
from ..pipelines import Pipeline
from ..utils.images import from_pil, to_pil


def held_out_images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` test images of each class: (10 per_class, 1, 32, 32), labels."""
    images, labels = load_fashion_mnist("test")
    index = torch.cat([torch.nonzero(labels == c)[:per_class, 0] for c in range(10)])
    return images[index], labels[index]


def evaluate_image_tasks(pipe: Pipeline, per_class: int = 20, low_strength: float = 0.3, seed: int = 0,
                         resample: int = 0, **settings) -> dict:
    if pipe.meta.get("dataset") != "fashion-mnist":
        raise ValueError("ldmkit evaluate-tasks measures the fashion-mnist model (its classifier is the judge)")
    classifier = load_fmnist_classifier(device=pipe.device)
    images, labels = held_out_images(per_class)
    other = (labels + 1 + torch.arange(len(labels)) % 9) % 10  # a different class for each image
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255  # the right half, repainted
    outputs = {"low": [], "full": [], "inpaint": []}
    kept = 0
    start = time.perf_counter()
    for k, (x, y, z) in enumerate(zip(images, labels, other)):
        picture = to_pil(x)
        options = dict(seed=seed + k, output="tensor", **settings)
        if not pipe.inpainting:
            outputs["low"].append(
                pipe.img2img(picture, fashion_mnist.caption(int(y)), strength=low_strength, **options)
            )
            outputs["full"].append(pipe.img2img(picture, fashion_mnist.caption(int(z)), strength=1.0, **options))
        [completed] = pipe.inpaint(picture, Image.fromarray(mask), fashion_mnist.caption(int(y)), seed=seed + k,
                                   resample=resample, **settings)
        kept += np.array_equal(np.asarray(completed)[:, :16], np.asarray(picture)[:, :16])
        outputs["inpaint"].append(from_pil(completed, 1)[None])
    seconds = time.perf_counter() - start
    completed = torch.cat(outputs["inpaint"]).cpu()
    agree = lambda results, wanted: (classify(classifier, results)[1] == wanted).float().mean().item()  # noqa: E731
    result = {"images": len(images)}
    if not pipe.inpainting:
        low, full = torch.cat(outputs["low"]).cpu(), torch.cat(outputs["full"]).cpu()
        result |= {
            "img2img_low_strength": low_strength,
            "img2img_low_psnr_db": psnr(low, images).mean().item(),
            "img2img_low_ssim": ssim(low, images).mean().item(),
            "img2img_low_class_kept": agree(low, labels),
            "img2img_full_follows_prompt": agree(full, other),
            "img2img_full_keeps_input_class": agree(full, labels),
        }
    return result | {
        "inpaint_method": "9-channel inpainting UNet" if pipe.inpainting else "x0 blending",
        "inpaint_resample": resample,
        "inpaint_right_half_class_agreement": agree(completed, labels),
        # how near the completion comes to the hidden half (one plausible answer of many)
        "inpaint_right_half_psnr_db": psnr(completed[..., 16:], images[..., 16:]).mean().item(),
        "inpaint_unmasked_pixels_identical": kept / len(images),
        "classifier_on_the_inputs": agree(images, labels),
        "seconds": seconds,
    }


def evaluate_upscaling(pipe: Pipeline, per_class: int = 20, seed: int = 0, **settings) -> dict:
    """PSNR and SSIM to the original of held-out test images upscaled from their area-averaged
    low-resolution versions, by the model and by bicubic interpolation."""
    from torch.nn import functional as F

    from ..train.diffusion import low_resolution

    if pipe.config.lowres is None:
        raise ValueError(f"{pipe.name} is not an upscaler")
    images, _ = held_out_images(per_class)
    factor = pipe.config.lowres.factor(pipe.autoencoder.config.downsampling_factor)
    small = low_resolution(images, (images.shape[-1] // factor,) * 2)
    bicubic = F.interpolate(small, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)
    start = time.perf_counter()
    upscaled = torch.cat([pipe.upscale(to_pil(x), seed=seed + k, output="tensor", **settings).cpu()
                          for k, x in enumerate(small)])
    seconds = time.perf_counter() - start
    return {
        "images": len(images), "factor": factor,
        "noise_level": settings.get("noise_level", pipe.config.lowres.noise_level),
        "ldmkit_psnr_db": psnr(upscaled, images).mean().item(), "ldmkit_ssim": ssim(upscaled, images).mean().item(),
        "bicubic_psnr_db": psnr(bicubic, images).mean().item(), "bicubic_ssim": ssim(bicubic, images).mean().item(),
        "seconds_per_image": seconds / len(images),
    }
