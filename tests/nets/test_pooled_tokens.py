"""DALL-E 2's decoder conditioning in the UNet (pooled_tokens): the pooled vector, projected into K
tokens, is appended to the context every attention reads (their mask entries True), or is the whole
context when none is given, under cross and added-KV attention alike; the tokens change the output;
bad configs are refused clearly; configs written before the option load as they were."""

import dataclasses
import json

import pytest
import torch

from ldmkit.config import from_dict
from ldmkit.nets import UNET_PRESETS, UNet, UNetConfig
from ldmkit.nets.controlnet import ControlNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

K, E = 4, 12  # tokens, pooled width
DECODER = dataclasses.replace(UNET_PRESETS["tiny"], pooled_dim=E, pooled_tokens=K)  # context_dim 32


def random_net(config: UNetConfig) -> UNet:
    torch.manual_seed(0)
    net = UNet(config).eval()
    with torch.no_grad():
        for p in net.parameters():  # conv_out and proj_out start at zero: give them weights to see through
            p.add_(0.05 * torch.randn_like(p))
    return net


def contexts_read(net: UNet, *args, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(context, mask) as every attention layer that reads the context receives them."""
    seen = []
    layers = [m.attn1 if m.added_kv else m.attn2 for name, m in net.named_modules()
              if name.endswith("transformer_blocks.0")]
    hooks = [layer.register_forward_hook(lambda _, args, out: seen.append((args[1], args[2]))) for layer in layers]
    out = net(*args, **kwargs)
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(layers) > 0
    return seen, out


def inputs(batch: int = 2):
    gen = torch.Generator().manual_seed(1)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    return (torch.randn(batch, 4, 8, 8, generator=gen), torch.tensor([10, 500]),
            torch.randn(batch, 5, 32, generator=gen), mask, torch.randn(batch, E, generator=gen))


@pytest.mark.parametrize("attention", ["cross", "added_kv"])
@torch.no_grad()
def test_the_pooled_tokens_extend_the_context_and_change_the_output(attention):
    net = random_net(dataclasses.replace(DECODER, text_attention=attention))
    x, t, context, mask, pooled = inputs()
    seen, out = contexts_read(net, x, t, context, mask, pooled=pooled)
    tokens = net.pooled_tokens_proj(pooled).reshape(2, K, 32)                 # the projection, token by token
    for read, read_mask in seen:
        assert read.shape == (2, 5 + K, 32) and read_mask.shape == (2, 5 + K)
        torch.testing.assert_close(read, torch.cat([context, tokens], dim=1))
        assert torch.equal(read_mask, torch.cat([mask, torch.ones(2, K, dtype=torch.bool)], dim=1))
    # no context: the tokens are the whole context, unmasked
    seen, alone = contexts_read(net, x, t, pooled=pooled)
    assert all(torch.equal(read, tokens) and read_mask is None for read, read_mask in seen)
    assert alone.shape == (2, 4, 8, 8) and not torch.allclose(alone, out, atol=1e-4)
    # the tokens matter on their own: with the time-embedding path cut, the pooled vector still acts
    net.pooled_proj.weight.zero_()
    net.pooled_proj.bias.zero_()
    assert not torch.allclose(net(x, t, pooled=pooled), net(x, t, pooled=pooled + 1), atol=1e-4)
    # one sample alone gives the same: the tokens and the mask are per sample
    torch.testing.assert_close(net(x, t, context, mask, pooled=pooled)[1:],
                               net(x[1:], t[1:], context[1:], mask[1:], pooled=pooled[1:]), atol=1e-5, rtol=1e-4)


def test_bad_configs_and_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="pooled_tokens projects the pooled condition .* needs pooled_dim"):
        dataclasses.replace(DECODER, pooled_dim=None)
    with pytest.raises(ValueError, match="needs pooled_dim .* and context_dim .* context_dim=None"):
        dataclasses.replace(DECODER, context_dim=None)
    with pytest.raises(ValueError, match="pooled_tokens must be a whole number >= 0"):
        dataclasses.replace(DECODER, pooled_tokens=-1)
    with pytest.raises(ValueError, match="pooled_tokens must be a whole number"):
        dataclasses.replace(DECODER, pooled_tokens=True)
    with pytest.raises(ValueError, match="pooled_tokens .* has no ControlNet"):
        ControlNetConfig(DECODER)
    x, t, context, mask, _ = inputs()
    with pytest.raises(ValueError, match=r"needs pooled= of shape \(2, 12\)"):
        UNet(DECODER)(x, t, context, mask)
    with pytest.raises(ValueError, match="context_mask was given without a context"):
        UNet(DECODER)(x, t, context_mask=mask, pooled=torch.zeros(2, E))
    with pytest.raises(ValueError, match="context width 7 does not match"):
        UNet(DECODER)(x, t, torch.zeros(2, 5, 7), pooled=torch.zeros(2, E))


def test_configs_written_before_the_option_load_as_they_were():
    old = {k: v for k, v in UNET_PRESETS["compact"].to_dict().items() if k != "pooled_tokens"}
    config = from_dict(UNetConfig, json.loads(json.dumps(old)))
    assert config == UNET_PRESETS["compact"] and config.pooled_tokens == 0
    assert not any(name.startswith("pooled_tokens_proj") for name in UNet(config).state_dict())
    assert UNet(DECODER).state_dict()["pooled_tokens_proj.weight"].shape == (K * 32, E)
