"""What the diffusion trainer (ldmkit/train/diffusion.py) does differently for an unCLIP decoder, a
model conditioned on CLIP image embeddings (model.conditioning="image-embedding"; DALL-E 2, Ramesh
et al. 2022, sec. 2.1): the training images are embedded once by the frozen CLIP, each step
conditions every image on its own embedding (the null, zero, embedding for a `cond_dropout` share:
the paper's embedding dropout, for guidance), and the sample grids show variations: each preview
image beside images decoded from its embedding. The loss, EMA, checkpoints and resume are the
trainer's own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..family.unclip_prior import image_embeddings
from ..model.clip import CLIP
from ..utils.images import image_grid, save_png, to_pil


def embed_training_images(clip_name: str, width: int, images: torch.Tensor, device: torch.device,
                          progress: bool = True) -> torch.Tensor:
    """The normalised image embeddings (N, E) of images (N, C, H, W) in [-1, 1] under the CLIP
    `clip_name` (a shipped name or a folder), on `device`; E must be the network's pooled_dim."""
    clip = CLIP.from_pretrained(clip_name, device).eval()
    embeddings = image_embeddings(clip, images, progress=progress)                # (N, E)
    if embeddings.shape[1] != width:
        raise ValueError(f"{clip_name}'s image embeddings are {embeddings.shape[1]}-d but the network reads "
                         f"{width}-d ones (net.pooled_dim): set net.pooled_dim={embeddings.shape[1]}")
    return embeddings.to(device)


def preview_rows(labels: torch.Tensor, count: int = 8) -> torch.Tensor:
    """Which training images the sample grids vary: the first of each class (up to `count`), or the
    first `count` images when there are no labels (-1, a folder's)."""
    if (labels < 0).all():
        return torch.arange(min(count, len(labels)))
    firsts = [int((labels == label).nonzero()[0]) for label in labels.unique(sorted=True)]
    return torch.tensor(sorted(firsts)[:count])


@torch.no_grad()
def save_variation_grid(pipeline, images: torch.Tensor, embeddings: torch.Tensor, captions: list[str], path: Path,
                        step: int, per_image: int = 7) -> None:
    """A row per image (labelled with its caption): the image, then `per_image` images decoded from
    its embedding (seeds 0..)."""
    decoded = pipeline.generate(image_embeds=embeddings, num_images=per_image, seed=0)
    tiles = []
    for k, image in enumerate(images):
        tiles += [to_pil(image), *decoded[k * per_image:(k + 1) * per_image]]
    grid = image_grid([im.resize((64, 64), 0) for im in tiles], columns=per_image + 1, row_labels=captions,
                      column_labels=["image", *(f"seed {k}" for k in range(per_image))])
    save_png(grid, path, {"step": step, "guidance": pipeline.defaults.guidance,
                          "columns": "a training image, then images decoded from its CLIP image embedding"})
