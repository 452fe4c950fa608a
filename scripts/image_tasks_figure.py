"""docs/images/image_tasks.png: for held-out Fashion-MNIST test images, the input, img2img at
strength 0.3 (own class) and 1.0 (another class), inpainting of the right half, outpainting.
Usage: .venv/bin/python scripts/image_tasks_figure.py [OUT]"""

import sys

import numpy as np
from PIL import Image

from ldmkit import Pipeline
from ldmkit.apps.evaluate_tasks import held_out_images
from ldmkit.data import fashion_mnist
from ldmkit.utils.images import image_grid, to_pil

out = sys.argv[1] if len(sys.argv) > 1 else "docs/images/image_tasks.png"
pipe = Pipeline.from_pretrained("fashion-mnist-f4")
images, labels = held_out_images(1)
mask = np.zeros((32, 32), np.uint8)
mask[:, 16:] = 255
tiles = []
for k, (x, y) in enumerate(zip(images[[0, 1, 3, 5, 8]], labels[[0, 1, 3, 5, 8]])):
    picture, own, other = to_pil(x), fashion_mnist.caption(int(y)), fashion_mnist.caption((int(y) + 4) % 10)
    [outpainted] = pipe.outpaint(picture, own, right=16, seed=k)
    row = [picture, pipe.img2img(picture, own, strength=0.3, seed=k)[0],
           pipe.img2img(picture, other, strength=1.0, seed=k)[0],
           pipe.inpaint(picture, Image.fromarray(mask), own, seed=k)[0], outpainted.crop((16, 0, 48, 32))]
    tiles += [t.resize((96, 96), Image.NEAREST) for t in row]
columns = ["input", "img2img 0.3", "1.0, other", "inpaint", "outpaint"]
image_grid(tiles, 5, column_labels=columns).save(out)
print(f"wrote {out}")
