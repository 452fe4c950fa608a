"""Image quality measures."""

from .image_quality import psnr, ssim
