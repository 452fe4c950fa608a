"""Tiled decoding: decode a large latent in overlapping tiles so memory stays bounded.

Decoding a 256x256 Stable Diffusion latent to a 2048x2048 image in one piece needs the
decoder's activations at full resolution at once: gigabytes. Here the latent is cut into
overlapping square tiles, each tile is decoded on its own, and the decoded tiles are blended
in image space with weights that ramp linearly across each overlap, so no seam shows.

The result is close to, not equal to, the untiled decode: GroupNorm statistics and the
decoder's mid attention see one tile instead of the whole latent. The overlap hides the seams
that this leaves; see tests/autoencoders/test_tiling.py for measured figures.

Names: B batch, c latent channels, H W latent size, f downsampling factor; a 1-D "span" is a
tile's [start, stop) along one latent axis.
"""

import torch
from torch import Tensor


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Tile positions [start, stop) along one latent axis of `size` pixels.

    Tiles start every tile - overlap pixels; the last one is moved back to end at the border
    rather than clipped, so every tile has the full size (and its decode the full context) and
    its overlap with the one before may be larger than `overlap`. A side that fits in one tile
    is one span.
    """
    if size <= tile:
        return [(0, size)]
    stride = tile - overlap
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:          # the stride does not divide size - tile
        starts.append(size - tile)
    return [(a, a + tile) for a in starts]


def blend_weights(spans: list[tuple[int, int]], f: int) -> list[Tensor]:
    """1-D image-space blend weights, one (f * (stop - start),) vector per span; over the
    image they sum to 1 at every pixel.

    Each tile's weight ramps linearly from 0 to 1 across its overlap with the tile before and
    back down across its overlap with the tile after (using the actual overlap, which is larger
    for a border-aligned last tile); elsewhere it is 1. Ramps are sampled at pixel centres,
    (i + 0.5) / m over an overlap of m image pixels, so two tiles' ramps add to exactly 1 and
    every weight is > 0. Dividing by the summed weights then makes a partition of unity even
    where three tiles overlap (overlap > tile / 2).
    """
    size = f * spans[-1][1]
    ramps = []
    for k, (a, b) in enumerate(spans):
        p = torch.arange(f * a, f * b, dtype=torch.float64) + 0.5   # image pixel centres
        w = torch.ones_like(p)
        if k > 0 and spans[k - 1][1] > a:                          # ramp up over the overlap
            m = f * (spans[k - 1][1] - a)
            w = torch.minimum(w, (p - f * a) / m)
        if k + 1 < len(spans) and spans[k + 1][0] < b:             # ramp down over the overlap
            m = f * (b - spans[k + 1][0])
            w = torch.minimum(w, (f * b - p) / m)
        ramps.append(w)
    total = torch.zeros(size, dtype=torch.float64)                 # summed weight per pixel
    for (a, b), w in zip(spans, ramps):
        total[f * a : f * b] += w
    return [w / total[f * a : f * b] for (a, b), w in zip(spans, ramps)]


@torch.no_grad()
def tiled_decode(autoencoder, z0: Tensor, tile: int = 64, overlap: int = 16) -> Tensor:
    """Decode scaled latents z0 (B, c, H, W) to images (B, C_out, f H, f W) tile by tile.

    Tiles of tile x tile latent pixels start every tile - overlap pixels (the last one in each
    direction aligned to the border); each is decoded by autoencoder.from_latent and the images
    are blended with separable linear ramps across the overlaps, normalised by the summed
    weights. A latent that fits in one tile is decoded directly: the result is exactly
    autoencoder.from_latent(z0).

    Memory: peak activation memory is that of one tile's decode (for the whole batch), plus
    the output image; with SD's VAE, tile=64 bounds a 2048x2048 decode to a 512x512 one.
    The output has z0's dtype and device; blending is done in float32 (or float64) anyway.
    """
    _validate(autoencoder, z0, tile, overlap)
    f = autoencoder.config.downsampling_factor
    B, _, H, W = z0.shape
    if H <= tile and W <= tile:
        return autoencoder.from_latent(z0)

    rows, cols = tile_spans(H, tile, overlap), tile_spans(W, tile, overlap)
    acc_dtype = torch.promote_types(z0.dtype, torch.float32)
    w_rows = [w.to(z0.device, acc_dtype) for w in blend_weights(rows, f)]
    w_cols = [w.to(z0.device, acc_dtype) for w in blend_weights(cols, f)]
    out = None
    for (r0, r1), wr in zip(rows, w_rows):
        for (c0, c1), wc in zip(cols, w_cols):
            x = autoencoder.from_latent(z0[:, :, r0:r1, c0:c1])      # (B, C_out, f h, f w)
            if x.shape[-2:] != (f * (r1 - r0), f * (c1 - c0)):
                raise ValueError(
                    f"from_latent turned a {r1 - r0}x{c1 - c0} latent tile into a "
                    f"{tuple(x.shape[-2:])} image, not f = {f} times larger; tiled_decode "
                    "needs a decoder whose output is f times its input on each side")
            if out is None:
                out = torch.zeros(B, x.shape[1], f * H, f * W, dtype=acc_dtype, device=z0.device)
            weight = wr[:, None] * wc[None, :]                       # (f h, f w), separable
            out[:, :, f * r0 : f * r1, f * c0 : f * c1] += weight * x.to(acc_dtype)
    # The 1-D weights are already normalised per axis, so their products sum to 1 per pixel.
    return out.to(z0.dtype)


def _validate(autoencoder, z0: Tensor, tile: int, overlap: int) -> None:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(tile) or tile < 1:
        raise ValueError(f"tile must be an int >= 1 (latent pixels per tile side), got {tile!r}")
    if not is_int(overlap) or not 0 <= overlap < tile:
        raise ValueError(f"overlap must be an int with 0 <= overlap < tile = {tile} (latent "
                         f"pixels shared by neighbouring tiles), got {overlap!r}; use a smaller "
                         "overlap or a larger tile")
    c = autoencoder.config.z_channels
    if not isinstance(z0, Tensor) or z0.ndim != 4 or z0.shape[1] != c:
        shape = tuple(z0.shape) if isinstance(z0, Tensor) else type(z0).__name__
        raise ValueError(f"expected a scaled latent batch z0 of shape (B, {c}, H, W) for this "
                         f"autoencoder, got {shape}; add a batch dimension with z0[None] if "
                         "you have a single latent")
