"""GLIDE's conditioning in the UNet: the text's keys and values joined to self-attention's
(text_attention="added_kv") against softmax attention written out, the pooled vector in the time
embedding, clear errors, and configs written before these options loading as they were."""

import dataclasses
import json
import math

import pytest
import torch

from ldmkit.config import from_dict
from ldmkit.model import MODELS_DIR
from ldmkit.model.conditioner import last_token_states
from ldmkit.nets import UNET_PRESETS, UNet, UNetConfig
from ldmkit.nets.attention import AddedKVAttention, TransformerBlock
from ldmkit.storage import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

GLIDE_TINY = dataclasses.replace(UNET_PRESETS["tiny"], text_attention="added_kv", pooled_dim=12)


def softmax_attention_written_out(attn: AddedKVAttention, x, context, mask):
    """sum_j softmax_j(q_i . k_j / sqrt(d)) v_j over the keys [context ; image], per head, with masked
    context tokens left out of the sum: an independent loop over samples and heads."""
    heads, inner = attn.heads, attn.to_q.out_features
    d = inner // heads
    out = torch.zeros(x.shape[0], x.shape[1], inner, dtype=torch.float64)
    for b in range(x.shape[0]):
        kept = mask[b].nonzero().flatten()
        keys = torch.cat([attn.add_k_proj(context[b, kept]), attn.to_k(x[b])]).double()   # (L' + N, inner)
        values = torch.cat([attn.add_v_proj(context[b, kept]), attn.to_v(x[b])]).double()
        queries = attn.to_q(x[b]).double()                                                  # (N, inner)
        for h in range(heads):
            part = slice(h * d, (h + 1) * d)
            weights = torch.softmax(queries[:, part] @ keys[:, part].T / math.sqrt(d), dim=-1)
            out[b, :, part] = weights @ values[:, part]
    return attn.to_out[0](out.float())


@torch.no_grad()
def test_added_kv_attention_is_softmax_over_context_and_image_keys():
    torch.manual_seed(0)
    attn = AddedKVAttention(dim=16, heads=2, head_dim=8, context_dim=6)
    x, context = torch.randn(3, 10, 16), torch.randn(3, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False, True, False, True, True]])
    torch.testing.assert_close(attn(x, context, mask), softmax_attention_written_out(attn, x, context, mask),
                               atol=1e-5, rtol=1e-5)
    # masked context tokens get no weight: changing them changes nothing
    changed = torch.where(mask[..., None], context, torch.randn_like(context) * 100)
    torch.testing.assert_close(attn(x, changed, mask), attn(x, context, mask))
    # no mask: every context token counts
    every = torch.ones(3, 5, dtype=torch.bool)
    torch.testing.assert_close(attn(x, context), softmax_attention_written_out(attn, x, context, every),
                               atol=1e-5, rtol=1e-5)


def test_an_added_kv_block_has_no_cross_attention_layer():
    cross = TransformerBlock(16, 2, 8, context_dim=6)
    added = TransformerBlock(16, 2, 8, context_dim=6, text_attention="added_kv")
    assert hasattr(cross, "attn2") and not hasattr(added, "attn2")
    assert {"attn1.add_k_proj.weight", "attn1.add_v_proj.weight"} <= set(added.state_dict())
    net = UNet(GLIDE_TINY)
    assert not any(".attn2." in name for name in net.state_dict())
    assert net.pooled_proj.in_features == 12 and net.pooled_proj.out_features == GLIDE_TINY.time_dim


def glide_inputs(batch: int = 2):
    torch.manual_seed(1)
    return (torch.randn(batch, 4, 8, 8), torch.tensor([10, 500]), torch.randn(batch, 5, 32),
            torch.tensor([[True] * 5, [True, True, True, False, False]]), torch.randn(batch, 12))


@torch.no_grad()
def test_pooled_vector_and_text_change_the_output():
    torch.manual_seed(0)
    net = UNet(GLIDE_TINY).eval()
    for p in net.parameters():  # conv_out and proj_out start at zero: give them weights to see through
        p.add_(0.02 * torch.randn_like(p))
    x, t, context, mask, pooled = glide_inputs()
    out = net(x, t, context, mask, pooled=pooled)
    assert out.shape == (2, 4, 8, 8)
    assert not torch.allclose(out, net(x, t, context, mask, pooled=pooled + 1), atol=1e-4)
    assert not torch.allclose(out, net(x, t, context + 1, mask, pooled=pooled), atol=1e-4)
    # one sample at a time gives the same: the mask and the pooled vector are per sample
    torch.testing.assert_close(out[1:], net(x[1:], t[1:], context[1:], mask[1:], pooled=pooled[1:]),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config, pooled, message", [
    (GLIDE_TINY, None, r"needs pooled= of shape \(2, 12\)"),
    (GLIDE_TINY, torch.zeros(2, 7), r"pooled must have shape \(B, pooled_dim\) = \(2, 12\), got \(2, 7\)"),
    (GLIDE_TINY, torch.zeros(12), r"pooled must have shape .* got \(12,\)"),
    (UNET_PRESETS["tiny"], torch.zeros(2, 12), "this UNet takes no pooled condition"),
])
def test_bad_pooled_inputs_raise(config, pooled, message):
    x, t, context, mask, _ = glide_inputs()
    with pytest.raises(ValueError, match=message):
        UNet(config)(x, t, context, mask, pooled=pooled)


def test_bad_glide_configs_raise():
    with pytest.raises(ValueError, match="text_attention must be one of"):
        dataclasses.replace(GLIDE_TINY, text_attention="perceiver")
    with pytest.raises(ValueError, match="'added_kv' .* needs a context_dim"):
        dataclasses.replace(GLIDE_TINY, context_dim=None)
    with pytest.raises(ValueError, match="pooled_dim must be a positive int"):
        dataclasses.replace(GLIDE_TINY, pooled_dim=0)


def test_configs_written_before_these_options_load_as_they_were():
    old = {k: v for k, v in UNET_PRESETS["compact"].to_dict().items() if k not in ("text_attention", "pooled_dim")}
    config = from_dict(UNetConfig, json.loads(json.dumps(old)))
    assert config == UNET_PRESETS["compact"]
    assert (config.text_attention, config.pooled_dim) == ("cross", None)
    # a shipped model's weights load strictly into the net its config.json describes
    states, meta, _ = load_checkpoint(MODELS_DIR / "fashion-mnist-f4")
    net_config = meta["model"].get("net", meta["model"].get("unet"))
    assert "text_attention" not in net_config
    UNet(from_dict(UNetConfig, net_config)).load_state_dict(states["unet"])


def test_the_pooled_text_is_the_last_real_token_state():
    states = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    torch.testing.assert_close(last_token_states(states, mask), torch.stack([states[0, 1], states[1, 3]]))
    torch.testing.assert_close(last_token_states(states, None), states[:, -1])
