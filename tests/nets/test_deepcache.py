"""DeepCache (ldmkit.nets.deepcache): interval 1 is the plain UNet; the deep blocks run on refresh
calls only; a refresh's output is the plain UNet's; the shallow branch over the deep features of
the same call is the full UNet; clear errors."""

import pytest
import torch

from ldmkit.nets.config import UNetConfig
from ldmkit.nets.deepcache import DeepCache, shallow_forward
from ldmkit.nets.dit import DiT
from ldmkit.nets.dit_config import DIT_PRESETS
from ldmkit.nets.unet import UNet

CONFIG = UNetConfig(in_channels=4, base_channels=32, channel_mult=(1, 2), attn_levels=(0, 1), num_res_blocks=2,
                    num_heads=2, context_dim=16, norm_groups=8)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = UNet(CONFIG).eval()
    with torch.no_grad():  # the zero-initialised output convs would hide every difference
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)


@torch.no_grad()
def test_interval_one_is_the_plain_unet_exactly(net):
    cached = DeepCache(net, 1)
    for step, t in enumerate([900, 600, 300]):
        x, context = inputs(step)
        assert torch.equal(cached(x, t, context=context), net(x, t, context=context))


@torch.no_grad()
def test_deep_blocks_run_on_refresh_calls_only(net):
    calls = []
    hooks = [net.mid_block.resnets[0].register_forward_hook(lambda *a: calls.append("mid")),
             net.down_blocks[1].resnets[0].register_forward_hook(lambda *a: calls.append("down1"))]
    try:
        cached = DeepCache(net, 3)
        refreshed = []
        for step in range(7):
            before = len(calls)
            x, context = inputs(step)
            cached(x, 999 - 100 * step, context=context)
            refreshed.append(len(calls) > before)
    finally:
        for hook in hooks:
            hook.remove()
    assert refreshed == [True, False, False, True, False, False, True]
    assert calls.count("mid") == calls.count("down1") == 3


@torch.no_grad()
def test_a_refresh_gives_the_plain_output_and_the_shallow_branch_rebuilds_it(net):
    x, context = inputs(1)
    plain = net(x, 500, context=context)
    for branch in (0, 1, 2):
        cached = DeepCache(net, 2, branch=branch)
        assert torch.equal(cached(x, 500, context=context), plain)  # refresh: the full UNet
        # the same call from the shallow branch over its own deep features: the same network, re-associated
        torch.testing.assert_close(cached(x, 500, context=context), plain, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(shallow_forward(net, x, 500, cached.deep, branch, context=context), plain,
                                   rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_a_cached_call_differs_from_the_full_one_by_the_stale_deep_part_only(net):
    (x0, c), (x1, _) = inputs(2), inputs(3)
    cached = DeepCache(net, 2)
    cached(x0, 700, context=c)
    reused = cached(x1, 650, context=c)
    full = net(x1, 650, context=c)
    assert not torch.allclose(reused, full)
    assert reused.shape == full.shape and torch.isfinite(reused).all()


@torch.no_grad()
def test_a_new_batch_size_refreshes(net):
    cached = DeepCache(net, 10)
    x, context = inputs(4)
    cached(x, 500, context=context)
    assert torch.equal(cached(x[:1], 500, context=context[:1]), net(x[:1], 500, context=context[:1]))


def test_bad_interval_or_network_is_refused_clearly(net):
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="interval must be a whole number >= 1"):
            DeepCache(net, bad)
    with pytest.raises(ValueError, match="branch must be a whole number in \\[0, 2\\]"):
        DeepCache(net, 2, branch=3)
    dit = DiT(DIT_PRESETS[next(iter(DIT_PRESETS))])
    with pytest.raises(ValueError, match="this network is a DiT, which has no such skips"):
        DeepCache(dit, 2)
