"""Image tasks on a Pipeline: image-to-image, inpainting, outpainting, super-resolution."""

from .image_tasks import img2img, inpaint, inpainting_inputs, outpaint, partial_timesteps
from .inputs import as_pil, image_tensor, mask_tensor
from .upscale import upscale
