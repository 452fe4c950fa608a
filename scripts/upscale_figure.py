"""docs/images/upscale.png: held-out Fashion-MNIST test images at 8x8 (area-averaged), bicubic
4x, the model's 4x, and the original 32x32.
Usage: .venv/bin/python scripts/upscale_figure.py MODEL [OUT]"""

import sys

import torch
from torch.nn import functional as F

from ldmkit import Pipeline
from ldmkit.apps.evaluate_tasks import held_out_images
from ldmkit.train.diffusion import low_resolution
from ldmkit.utils.images import image_grid, to_pil

model = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else "docs/images/upscale.png"
pipe = Pipeline.from_pretrained(model)
images, _ = held_out_images(1)
small = low_resolution(images, (8, 8))
bicubic = F.interpolate(small, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
upscaled = torch.cat([pipe.upscale(to_pil(x), seed=k, output="tensor") for k, x in enumerate(small)])
rows = [small, bicubic, upscaled, images]
tiles = [to_pil(x).resize((64, 64), 0) for row in rows for x in row]
image_grid(tiles, len(images), row_labels=["8x8 input", "bicubic", "ldmkit", "original"]).save(out)
print(f"wrote {out}")
