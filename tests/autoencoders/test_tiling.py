"""Tiled decoding: the tiling arithmetic and blend weights exactly, on a per-pixel stand-in
decoder; closeness to the untiled decode and the value of the overlap, on the trained
fmnist-kl-f4 autoencoder; and the errors bad arguments get.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ldmkit.autoencoders import AE_PRESETS, Autoencoder
from ldmkit.autoencoders.tiling import blend_weights, tile_spans, tiled_decode
from ldmkit.data import load_fashion_mnist
from ldmkit.model import load_autoencoder

FMNIST_KL_F4 = "models/autoencoders/fmnist-kl-f4"


class PixelwiseDecoder(nn.Module):
    """A stand-in decoder with no spatial context: nearest upsampling by f, then a fixed
    per-pixel channel mix. Tiles of its output are exactly the output of its tiles, so a tiled
    decode must equal the untiled one up to rounding, whatever the tile and overlap."""

    def __init__(self, f: int, z_channels: int = 3, out_channels: int = 2):
        super().__init__()
        self.config = SimpleNamespace(downsampling_factor=f, z_channels=z_channels)
        self.mix = torch.randn(out_channels, z_channels, generator=torch.Generator().manual_seed(0))

    def from_latent(self, z0: torch.Tensor) -> torch.Tensor:
        f = self.config.downsampling_factor
        x = z0.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)   # (B, c, f H, f W)
        return torch.einsum("oc,bchw->bohw", self.mix.to(z0), x)           # (B, C_out, f H, f W)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2, so peak^2 = 4)."""
    return (10 * torch.log10(4 / ((a - b) ** 2).mean())).item()


# --- tiling arithmetic and weights --------------------------------------------------------

@pytest.mark.parametrize("size,tile,overlap", [(21, 5, 2), (13, 5, 2), (13, 5, 0), (13, 5, 4),
                                               (16, 8, 4), (8, 8, 3), (3, 8, 2), (9, 1, 0)])
def test_spans_cover_the_axis_with_full_tiles_at_the_stride(size, tile, overlap):
    spans = tile_spans(size, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == size                  # last one on the border
    if size <= tile:
        assert spans == [(0, size)]
        return
    assert all(b - a == tile for a, b in spans)                       # moved back, not clipped
    starts = [a for a, _ in spans]
    assert all(s - r == tile - overlap for r, s in zip(starts[:-2], starts[1:-1]))
    assert 0 < starts[-1] - starts[-2] <= tile - overlap              # no gap, no duplicate


@pytest.mark.parametrize("size,tile,overlap,f", [(21, 5, 2, 4), (13, 5, 2, 1), (13, 5, 0, 2),
                                                 (13, 5, 4, 3), (16, 8, 4, 4), (9, 1, 0, 2)])
def test_blend_weights_sum_to_one_and_ramp_linearly(size, tile, overlap, f):
    spans = tile_spans(size, tile, overlap)
    weights = blend_weights(spans, f)
    total = torch.zeros(f * size, dtype=torch.float64)
    for (a, b), w in zip(spans, weights):
        assert w.shape == (f * (b - a),) and (w > 0).all() and (w <= 1 + 1e-12).all()
        total[f * a : f * b] += w
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
    # the 2-D weights are outer products, so they sum to 1 over the image as well
    grid = torch.zeros(f * size, f * size, dtype=torch.float64)
    for (r0, r1), wr in zip(spans, weights):
        for (c0, c1), wc in zip(spans, weights):
            grid[f * r0 : f * r1, f * c0 : f * c1] += wr[:, None] * wc[None, :]
    torch.testing.assert_close(grid, torch.ones_like(grid), rtol=0, atol=1e-12)
    # where exactly two tiles overlap the later one's weight is a straight line (equal steps)
    if len(spans) > 1 and 2 * overlap <= tile:
        (_, b0), (a1, _) = spans[0], spans[1]
        rising = weights[1][: f * (b0 - a1)]
        if len(rising) > 1:
            steps = rising.diff()
            torch.testing.assert_close(steps, steps[:1].expand_as(steps), rtol=0, atol=1e-12)
            assert 0 < rising[0] < 0.5 < rising[-1] < 1


@pytest.mark.parametrize("H,W,tile,overlap,f", [(13, 21, 5, 2, 4), (13, 21, 5, 0, 2),
                                                (13, 21, 5, 4, 1), (16, 16, 8, 4, 4),
                                                (7, 30, 8, 3, 2), (6, 5, 1, 0, 3)])
def test_tiled_equals_untiled_for_a_pixelwise_decoder(H, W, tile, overlap, f):
    ae = PixelwiseDecoder(f)
    z0 = torch.randn(2, 3, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = tiled_decode(ae, z0, tile=tile, overlap=overlap)
    assert out.shape == (2, 2, f * H, f * W) and out.dtype == torch.float64
    torch.testing.assert_close(out, ae.from_latent(z0), rtol=0, atol=1e-12)
    # float32 input: float32 output, equal to float precision
    out32 = tiled_decode(ae, z0.float(), tile=tile, overlap=overlap)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, ae.from_latent(z0.float()), rtol=1e-5, atol=1e-5)


def test_a_latent_that_fits_in_one_tile_is_decoded_directly():
    ae = Autoencoder(AE_PRESETS["tiny"]).eval()
    z0 = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        untiled = ae.from_latent(z0)
    assert torch.equal(tiled_decode(ae, z0, tile=7, overlap=3), untiled)
    assert torch.equal(tiled_decode(ae, z0, tile=64, overlap=16), untiled)


# --- the trained autoencoder ---------------------------------------------------------------

@pytest.fixture(scope="module")
def fmnist_latents():
    """Latents (1, 4, 16, 16) of four Fashion-MNIST test images in a 2x2 mosaic (64x64), with
    the fmnist-kl-f4 autoencoder. The mosaic is rolled by 16 pixels so that the clothes, not the
    black padding between them, lie on the tile seams: on the unrolled mosaic every seam falls
    in flat background, where even tiling without overlap barely shows (seam error 0.015 vs
    0.008 with overlap 4)."""
    ae = load_autoencoder(FMNIST_KL_F4)
    x, _ = load_fashion_mnist("test", limit=4)                          # (4, 1, 32, 32)
    mosaic = torch.cat([torch.cat([x[0], x[1]], -1), torch.cat([x[2], x[3]], -1)], -2)
    image = torch.roll(mosaic[None], (16, 16), dims=(-2, -1))           # (1, 1, 64, 64)
    with torch.no_grad():
        z0 = ae.to_latent(image)                                        # (1, 4, 16, 16)
    return ae, z0


def test_tiled_decode_is_close_to_untiled_and_the_overlap_hides_the_seams(fmnist_latents):
    ae, z0 = fmnist_latents
    with torch.no_grad():
        untiled = ae.from_latent(z0)                                    # (1, 1, 64, 64)
    blended = tiled_decode(ae, z0, tile=8, overlap=4)                   # 3x3 tiles
    naive = tiled_decode(ae, z0, tile=8, overlap=0)                     # 2x2 tiles, hard seams
    # GroupNorm and mid attention see one tile, so not equal; measured 33.0 dB vs 18.9 dB
    assert psnr(blended, untiled) > 30.0
    assert psnr(naive, untiled) < psnr(blended, untiled) - 6

    def seam_error(x):  # mean |error| on the two rows and columns beside the naive seam (32)
        d = (x - untiled).abs()[0, 0]                                   # (64, 64)
        return torch.cat([d[31:33].flatten(), d[:, 31:33].flatten()]).mean().item()

    # measured 0.484 without overlap vs 0.038 with overlap 4 (pixel values in [-1, 1])
    assert seam_error(naive) > 4 * seam_error(blended)
    assert seam_error(blended) < 0.1


# --- bad arguments -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,shape,message", [
    ({"tile": 0}, (1, 3, 8, 8), r"tile must be an int >= 1"),
    ({"tile": 4.0}, (1, 3, 8, 8), r"tile must be an int >= 1"),
    ({"tile": 4, "overlap": 4}, (1, 3, 8, 8), r"0 <= overlap < tile = 4.*smaller overlap"),
    ({"tile": 4, "overlap": -1}, (1, 3, 8, 8), r"0 <= overlap < tile = 4"),
    ({"tile": 4, "overlap": 1.5}, (1, 3, 8, 8), r"overlap must be an int"),
    ({}, (3, 8, 8), r"shape \(B, 3, H, W\).*got \(3, 8, 8\).*z0\[None\]"),
    ({}, (1, 4, 8, 8), r"shape \(B, 3, H, W\).*got \(1, 4, 8, 8\)"),
])
def test_bad_arguments_raise_clear_errors(kwargs, shape, message):
    with pytest.raises(ValueError, match=message):
        tiled_decode(PixelwiseDecoder(2), torch.zeros(shape), **kwargs)
