"""ControlNet's properties: a fresh one leaves the base UNet's output unchanged bit for bit (zero
convolutions), as does scale 0 on a trained one; its encoder is a copy of the base's; gradients
reach the zero convolutions at once and the rest after one step; the hint encoder lands on the
latent size; bad hints and ControlNets made for another base are refused naming both sides."""

from dataclasses import replace

import pytest
import torch

from ldmkit.nets import UNET_PRESETS, UNet
from ldmkit.nets.controlnet import ControlNet, HintEncoder, block_scales, check_base

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = UNET_PRESETS["tiny"]  # 2 levels, 1 resnet each, context 32


def perturbed(module: torch.nn.Module, scale: float = 0.05, seed: int = 0):
    """Every weight moved off its init, zero-initialised ones included: a 'trained' network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    context = torch.randn(batch, 5, 32, generator=g)
    hint = torch.rand(batch, 3, 16, 16, generator=g)
    return x, torch.tensor([3.0, 700.0][:batch]), context, hint


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return perturbed(UNet(CONFIG)).eval()


def test_fresh_controlnet_leaves_the_base_unchanged_bit_for_bit(base):
    net = ControlNet.from_unet(base, hint_widths=(16, 32)).eval()
    x, t, context, hint = inputs()
    with torch.no_grad():
        control = net(x, t, hint, context)
        assert all(torch.count_nonzero(r) == 0 for r in control)
        assert torch.equal(base(x, t, context, control=control), base(x, t, context))


def test_the_encoder_is_a_copy_of_the_base(base):
    net = ControlNet.from_unet(base, hint_widths=(16, 32))
    mine, theirs = net.state_dict(), base.state_dict()
    copied = [k for k in mine if k.startswith(("conv_in.", "time_embedding.", "down_blocks.", "mid_block."))]
    assert len(copied) > 20 and all(torch.equal(mine[k], theirs[k]) for k in copied)
    zero = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out")
    assert all(torch.count_nonzero(mine[k]) == 0 for k in mine if k.startswith(zero))


def test_scale_zero_equals_the_base_and_scales_are_linear(base):
    net = perturbed(ControlNet.from_unet(base, hint_widths=(16, 32)), seed=3).eval()
    x, t, context, hint = inputs()
    with torch.no_grad():
        plain = base(x, t, context)
        assert torch.equal(base(x, t, context, control=net(x, t, hint, context, scale=0.0)), plain)
        n = len(net(x, t, hint, context))
        assert torch.equal(base(x, t, context, control=net(x, t, hint, context, scale=[0.0] * n)), plain)
        full, half = net(x, t, hint, context), net(x, t, hint, context, scale=0.5)
        assert all(torch.allclose(h, 0.5 * f) for h, f in zip(half, full))
        steered = base(x, t, context, control=full)
        assert (steered - plain).abs().max() > 1e-2  # a trained ControlNet does steer
        # per-block scales: only the middle block's residual
        only_mid = net(x, t, hint, context, scale=[0.0] * (n - 1) + [1.0])
        assert all(torch.count_nonzero(r) == 0 for r in only_mid[:-1]) and torch.equal(only_mid[-1], full[-1])


def test_guess_mode_scales_are_diffusers_logspace():
    scales = block_scales(13, 2.0, guess_mode=True)  # SD: 12 skips + the middle block
    assert scales[0] == pytest.approx(0.2) and scales[-1] == pytest.approx(2.0)
    assert scales == pytest.approx([2.0 * 10 ** (-1 + k / 12) for k in range(13)])
    with pytest.raises(ValueError, match="give one number or 13"):
        block_scales(13, [1.0, 2.0], guess_mode=False)


def test_gradients_reach_the_zero_convolutions_after_one_step(base):
    """Step 1: the zero convs (and the hint encoder's last conv) get gradients, nothing behind
    them does (their weights are 0). After one SGD step they are not 0, and the gradient reaches
    the encoder copy and the hint encoder's first conv: the network can learn."""
    net = ControlNet.from_unet(base, hint_widths=(16, 32)).train()
    base.requires_grad_(False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, t, context, hint = inputs()
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))

    def step():
        opt.zero_grad()
        loss = (base(x, t, context, control=net(x, t, hint, context)) - target).pow(2).mean()
        loss.backward()
        return {name: p.grad.abs().sum().item() for name, p in net.named_parameters()}

    first = step()
    zero_convs = [k for k in first if k.startswith(("controlnet_down_blocks.", "controlnet_mid_block."))]
    assert all(first[k] > 0 for k in zero_convs if k.endswith("weight"))
    assert first["controlnet_cond_embedding.conv_out.weight"] == 0  # its output feeds convs behind zero convs
    assert first["down_blocks.0.resnets.0.conv1.weight"] == 0 and first["controlnet_cond_embedding.conv_in.weight"] == 0
    opt.step()
    second = step()
    assert second["down_blocks.0.resnets.0.conv1.weight"] > 0
    assert second["controlnet_cond_embedding.conv_out.weight"] > 0
    opt.step()
    third = step()
    assert third["controlnet_cond_embedding.conv_in.weight"] > 0


def test_hint_encoder_lands_on_the_latent_size():
    encoder = HintEncoder(3, (16, 32, 96, 256), 320)  # SD's: 512 px -> 64 latents
    assert encoder(torch.zeros(1, 3, 64, 48)).shape == (1, 320, 8, 6)
    assert torch.count_nonzero(encoder(torch.rand(1, 3, 64, 48))) == 0  # its last conv is zero
    assert HintEncoder(1, (8, 16), 32)(torch.zeros(2, 1, 16, 16)).shape == (2, 32, 8, 8)


def test_bad_hints_and_controls_are_named(base):
    net = ControlNet.from_unet(base, hint_widths=(16, 32)).eval()
    x, t, context, hint = inputs()
    with torch.no_grad(), pytest.raises(ValueError, match="hint has 1 channels but this ControlNet takes 3"):
        net(x, t, hint[:, :1], context)
    with torch.no_grad(), pytest.raises(ValueError, match="hint is 12x12 pixels but this ControlNet needs 16x16"):
        net(x, t, hint[:, :, :12, :12], context)
    with torch.no_grad():
        control = net(x, t, hint, context)
    with torch.no_grad(), pytest.raises(ValueError, match=f"control must hold {len(control)} residuals"):
        base(x, t, context, control=control[:-1])


def test_a_controlnet_for_another_base_is_refused_naming_both(base):
    net = ControlNet.from_unet(base, hint_widths=(16, 32))
    check_base(net.config, base.config)  # its own base: fine
    wider = replace(CONFIG, base_channels=64)
    both = r"widths \(32, 64\).*context width 32.*the model's UNet has widths \(64, 128\)"
    with pytest.raises(ValueError, match=both):
        check_base(net.config, wider)
    v1 = replace(CONFIG, context_dim=768)
    with pytest.raises(ValueError, match=r"context width 32;.*context width 768 \(SD v1\)"):
        check_base(net.config, v1)
