"""Image quality measures."""

from .image_quality import gradient_energy_ratio, psnr, ssim
