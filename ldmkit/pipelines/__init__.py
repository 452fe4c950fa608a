"""Composition: a model's parts into tasks. core.py is the shared core (conditioning pair,
network inputs, sampling with a per-step hook, decoding, validation); one file per task
(txt2img, image_tasks: img2img / inpaint / outpaint, upscale); Pipeline is a thin facade."""

from .core import Cancelled, Step, StepHook
from .image_tasks import img2img, inpaint, inpainting_inputs, outpaint, partial_timesteps
from .inputs import as_pil, image_tensor, mask_tensor
from .pipeline import Pipeline
from .txt2img import generate
from .upscale import upscale

__all__ = [
    "Cancelled", "Pipeline", "Step", "StepHook", "as_pil", "generate", "image_tensor", "img2img", "inpaint",
    "inpainting_inputs", "mask_tensor", "outpaint", "partial_timesteps", "upscale",
]
