"""Nearest x2 upsampling + 3x3 conv computed as four 2x2 convs on the small grid: the same values
and gradients as the two-step computation, in both memory formats; a hooked conv (LoRA) still
sees its call."""

import pytest
import torch
from torch.nn import functional as F

from ldmkit.nets.upsample import Upsample, upsample_conv


def two_step(x, weight, bias):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 1, 1), (3, 2, 6, 2)])
def test_upsample_conv_equals_interpolate_then_conv(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, shape[1], 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    expected, got = two_step(x, weight, bias), upsample_conv(x, weight, bias)
    assert got.shape == (shape[0], 5, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    grads_expected = torch.autograd.grad(expected, (x, weight, bias), upstream)
    grads_got = torch.autograd.grad(got, (x, weight, bias), upstream)
    for g, e in zip(grads_got, grads_expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    assert upsample_conv(x, weight, None).sub(two_step(x, weight, None)).abs().max() < 1e-12


def test_upsample_keeps_the_memory_format_and_float32_values():
    module = Upsample(8)
    x = torch.randn(2, 8, 16, 20)  # at least 16 x 16 pixels: computed on the small grid
    torch.testing.assert_close(module(x), two_step(x, module.conv.weight, module.conv.bias), rtol=1e-5, atol=1e-5)
    module = module.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    out = module(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, two_step(x, module.conv.weight, module.conv.bias), rtol=1e-5, atol=1e-5)


def test_small_inputs_and_hooked_convs_take_the_two_step_route(monkeypatch):
    module, calls = Upsample(4), []
    monkeypatch.setattr("ldmkit.nets.upsample.upsample_conv", lambda *args: calls.append(args) or args[0])
    assert module(torch.randn(1, 4, 8, 8)).shape == (1, 4, 16, 16) and calls == []  # 64 pixels: two steps
    module(torch.randn(1, 4, 16, 16))
    assert len(calls) == 1


def test_a_hook_on_the_conv_sees_the_upsampled_input():
    module, x = Upsample(4), torch.randn(1, 4, 16, 16)
    seen = []
    module.conv.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape) or out + 1)
    expected = two_step(x, module.conv.weight, module.conv.bias) + 1
    torch.testing.assert_close(module(x), expected)
    assert seen == [(1, 4, 32, 32)]


def test_a_traced_upsample_is_the_plain_two_step_graph():
    """A tracing compiler (OpenVINO's convert_model) gets interpolate + conv, which it fuses, not
    the four strided writes, which it turns into scatters (0.6x on the SD VAE decoder)."""
    up = Upsample(8).eval()
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        graph = str(torch.jit.trace(up, x).graph)
        torch.testing.assert_close(torch.jit.trace(up, x)(x), up(x), rtol=1e-5, atol=1e-5)
    assert "upsample_nearest2d" in graph and "copy_" not in graph
