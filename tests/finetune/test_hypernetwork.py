"""Hypernetworks: only cross-attention's keys and values change, by c + s * mlp(c); the web
UI's .pt layout (built by hand here) and ldmkit's .safetensors load back exactly; unsafe files
are refused."""

from collections import OrderedDict
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from ldmkit.finetune.hypernetwork import (
    Hypernetwork,
    HypernetworkModule,
    HypernetworkOptions,
    apply_hypernetwork,
    load_hypernetwork,
    save_hypernetwork,
)
from ldmkit.nets import UNET_PRESETS, UNet
from ldmkit.nets.attention import TransformerBlock
from ldmkit.storage import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

D = 384  # ldmkit's MiniLM context width


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = UNet(replace(UNET_PRESETS["tiny"], context_dim=D)).eval()
    with torch.no_grad():  # zero-initialised outputs would hide the attention: perturb all
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 500]),
            torch.randn(2, 7, D, generator=gen))


def trained(hn: Hypernetwork, seed: int = 2) -> Hypernetwork:
    """Weights as after training: large enough that the MLPs visibly change the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hn.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return hn


def run(unet, inputs):
    with torch.no_grad():
        return unet(*inputs)


def blocks(unet):
    return [m for m in unet.modules() if isinstance(m, TransformerBlock)]


def record_inputs(linear, store):
    return linear.register_forward_hook(lambda m, args, out: store.append((args[0], out)))


def test_fresh_is_near_identity_and_strength_zero_or_detach_is_the_plain_model(unet, inputs):
    plain = run(unet, inputs)
    torch.manual_seed(3)
    hn = Hypernetwork.create([D]).attach(unet)
    try:
        near = run(unet, inputs)
        assert not torch.equal(near, plain)
        assert (near - plain).abs().max() < 0.05 * plain.abs().max()  # N(0, 0.01) weights
        trained(hn)
        assert (run(unet, inputs) - plain).abs().max() > 0.05 * plain.abs().max()
        hn.set_strength(0)
        assert torch.equal(run(unet, inputs), plain)
        hn.set_strength(0.7)
    finally:
        hn.detach()
    assert not hn.attached
    assert torch.equal(run(unet, inputs), plain)


def test_only_cross_attention_keys_and_values_change(unet, inputs):
    hn = trained(Hypernetwork.create([D], activation="relu"))
    mlp_k, mlp_v = hn.pair(D)
    block = blocks(unet)[0]
    seen = {name: [] for name in ("q1", "k1", "v1", "k2", "v2")}
    layers = {"q1": block.attn1.to_q, "k1": block.attn1.to_k, "v1": block.attn1.to_v,
              "k2": block.attn2.to_k, "v2": block.attn2.to_v}
    hn.attach(unet, strength=0.8)
    handles = [record_inputs(layer, seen[name]) for name, layer in layers.items()]
    try:
        run(unet, inputs)
    finally:
        hn.detach()
        for handle in handles:
            handle.remove()
    for attn in (b.attn1 for b in blocks(unet)):  # no hook at all on self-attention
        assert not attn.to_k._forward_pre_hooks and not attn.to_v._forward_pre_hooks
    assert torch.equal(seen["k1"][0][0], seen["q1"][0][0])  # attn1 keys: x itself, unchanged
    assert torch.equal(seen["v1"][0][0], seen["q1"][0][0])
    context = inputs[2]
    with torch.no_grad():
        want_k = context + mlp_k.linear(context) * 0.8  # by hand: c + s * mlp_k(c)
        want_v = context + mlp_v.linear(context) * 0.8
        got_k, out_k = seen["k2"][0]
        got_v, out_v = seen["v2"][0]
        torch.testing.assert_close(got_k, want_k, rtol=0, atol=0)
        torch.testing.assert_close(got_v, want_v, rtol=0, atol=0)
        torch.testing.assert_close(out_k, F.linear(want_k, block.attn2.to_k.weight))
        torch.testing.assert_close(out_v, F.linear(want_v, block.attn2.to_v.weight))
    assert not torch.allclose(got_k, got_v)


def test_strength_scales_the_residual_linearly(unet, inputs):
    hn = trained(Hypernetwork.create([D], layer_structure=(1, 1.5, 1), activation="tanh"))
    to_k = blocks(unet)[0].attn2.to_k
    residual = {}
    hn.attach(unet)
    try:
        for strength in (0.25, 1.0, -2.0):
            hn.set_strength(strength)
            seen = []
            handle = record_inputs(to_k, seen)
            run(unet, inputs)
            handle.remove()
            residual[strength] = seen[0][0] - inputs[2]
    finally:
        hn.detach()
    torch.testing.assert_close(residual[0.25] * 4, residual[1.0])
    torch.testing.assert_close(residual[-2.0], residual[1.0] * -2)
    with pytest.raises(ValueError, match="strength must be a finite number"):
        hn.set_strength(float("nan"))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_load_round_trip(tmp_path, unet, inputs, suffix):
    hn = trained(Hypernetwork.create([D, 768], layer_structure=(1, 2, 2, 1), activation="swish",
                                     layer_norm=True, dropout=(0, 0.1, 0.2, 0),
                                     activate_output=True, name="cat style"))
    hn.step, hn.sd_checkpoint = 1200, "abcdef1234"
    path = save_hypernetwork(hn, tmp_path / f"cat{suffix}")
    back = load_hypernetwork(path)
    assert (back.options, back.name, back.step, back.sd_checkpoint, back.widths) == \
        (hn.options, "cat style", 1200, "abcdef1234", [D, 768])
    assert not back.training
    want = hn.state_dict()
    assert back.state_dict().keys() == want.keys()
    for key, value in back.state_dict().items():
        assert torch.equal(value, want[key]), key
    outputs = []
    for net in (hn.eval(), back):
        net.attach(unet, strength=0.6)
        outputs.append(run(unet, inputs))
        net.detach()
    assert torch.equal(*outputs)
    assert not list(tmp_path.glob(".cat*"))  # atomic write: no temporary left behind


def a1111_weights(gen, d=D):
    """One MLP of the web UI for [1, 2, 1], relu, layer norm, dropout [0, 0.3, 0], output not
    activated: Sequential(0 Linear, 1 ReLU, 2 LayerNorm, 3 Dropout, 4 Linear, 5 LayerNorm)."""
    return OrderedDict([
        ("linear.0.weight", 0.05 * torch.randn(2 * d, d, generator=gen)),
        ("linear.0.bias", 0.05 * torch.randn(2 * d, generator=gen)),
        ("linear.2.weight", 1 + 0.1 * torch.randn(2 * d, generator=gen)),
        ("linear.2.bias", 0.1 * torch.randn(2 * d, generator=gen)),
        ("linear.4.weight", 0.05 * torch.randn(d, 2 * d, generator=gen)),
        ("linear.4.bias", 0.05 * torch.randn(d, generator=gen)),
        ("linear.5.weight", 0.1 * torch.randn(d, generator=gen)),
        ("linear.5.bias", 0.1 * torch.randn(d, generator=gen)),
    ])


def a1111_mlp(w, c):
    """The MLP written out by hand, dropout being off at inference."""
    h = F.relu(F.linear(c, w["linear.0.weight"], w["linear.0.bias"]))
    h = F.layer_norm(h, h.shape[-1:], w["linear.2.weight"], w["linear.2.bias"])
    h = F.linear(h, w["linear.4.weight"], w["linear.4.bias"])
    return F.layer_norm(h, h.shape[-1:], w["linear.5.weight"], w["linear.5.bias"])


def test_web_ui_file_loads_with_the_outputs_of_its_weights(tmp_path, unet, inputs):
    gen = torch.Generator().manual_seed(4)
    k, v = a1111_weights(gen), a1111_weights(gen)
    path = tmp_path / "webui.pt"
    torch.save({D: (k, v), 1024: [a1111_weights(gen, 1024), a1111_weights(gen, 1024)],
                "step": 500, "name": "webui", "layer_structure": [1.0, 2.0, 1.0],
                "activation_func": "relu", "is_layer_norm": True, "weight_initialization": "Normal",
                "sd_checkpoint": None, "sd_checkpoint_name": None, "activate_output": False,
                "use_dropout": True, "dropout_structure": [0.0, 0.3, 0.0],
                "last_layer_dropout": True, "optional_info": None}, path)
    hn = load_hypernetwork(path)
    assert (hn.name, hn.step, hn.widths) == ("webui", 500, [D, 1024])
    context = inputs[2]
    with torch.no_grad():
        torch.testing.assert_close(hn.pair(D)[0](context, 0.5),
                                   context + 0.5 * a1111_mlp(k, context))

    by_hand = []
    for b in blocks(unet):
        for layer, w in ((b.attn2.to_k, k), (b.attn2.to_v, v)):
            by_hand.append(layer.register_forward_pre_hook(
                lambda m, args, w=w: (args[0] + 0.5 * a1111_mlp(w, args[0]),)))
    want = run(unet, inputs)
    for handle in by_hand:
        handle.remove()
    apply_hypernetwork(SimpleNamespace(unet=unet), path, strength=0.5)
    got = run(unet, inputs)
    hn_attached = [h.hypernetwork for h in blocks(unet)[0].attn2.to_k._forward_pre_hooks.values()]
    hn_attached[0].detach()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_older_web_ui_files(tmp_path, inputs):
    """NovelAI's linear1 / linear2 with no options; use_dropout without dropout_structure."""
    gen = torch.Generator().manual_seed(5)
    old = {"linear1.weight": torch.randn(2 * D, D, generator=gen),
           "linear1.bias": torch.randn(2 * D, generator=gen),
           "linear2.weight": torch.randn(D, 2 * D, generator=gen),
           "linear2.bias": torch.randn(D, generator=gen)}
    torch.save({D: [old, old]}, tmp_path / "nai.pt")
    hn = load_hypernetwork(tmp_path / "nai.pt")
    assert hn.name == "nai" and hn.options.activation == "linear"
    c = inputs[2]
    want = c + F.linear(F.linear(c, old["linear1.weight"], old["linear1.bias"]),
                        old["linear2.weight"], old["linear2.bias"])
    with torch.no_grad():
        torch.testing.assert_close(hn.pair(D)[1](c), want)

    # [1, 2, 2, 1], relu, use_dropout + last_layer_dropout -> [0, 0.3, 0.3, 0]: Linear 0, ReLU 1,
    # Dropout 2, Linear 3, ReLU 4, Dropout 5, Linear 6 (activate_output absent: True on load, but
    # "linear" here would add nothing, so relu shows the gap it leaves: ReLU 7).
    shapes = {0: (2 * D, D), 3: (2 * D, 2 * D), 6: (D, 2 * D)}
    weights = {f"linear.{i}.{p}": torch.zeros(s if p == "weight" else s[:1])
               for i, s in shapes.items() for p in ("weight", "bias")}
    torch.save({D: (weights, weights), "layer_structure": [1, 2, 2, 1], "activation_func": "relu",
                "use_dropout": True, "last_layer_dropout": True}, tmp_path / "old.pt")
    layers = load_hypernetwork(tmp_path / "old.pt").pair(D)[0].linear
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU",
                                                  "Dropout", "Linear", "ReLU"]


def test_sequential_indices_follow_the_web_ui():
    def kinds(**options):
        mlp = HypernetworkModule(8, HypernetworkOptions(**options))
        return [type(m).__name__ for m in mlp.linear]

    assert kinds() == ["Linear", "Linear"]
    assert kinds(activation="relu") == ["Linear", "ReLU", "Linear"]
    assert kinds(activation="relu", activate_output=True) == ["Linear", "ReLU", "Linear", "ReLU"]
    assert kinds(activation="linear", layer_norm=True, dropout_structure=(0, 0.3, 0)) == \
        ["Linear", "LayerNorm", "Dropout", "Linear", "LayerNorm"]
    assert kinds(activation="swish") == ["Linear", "Hardswish", "Linear"]  # the UI's "swish"
    mlp = HypernetworkModule(8, HypernetworkOptions(layer_structure=(1, 0.5, 1)))
    assert [tuple(p.shape) for p in mlp.parameters()] == [(4, 8), (4,), (8, 4), (8,)]
    assert mlp.linear[0].bias.abs().max() == 0 and mlp.linear[0].weight.std() < 0.02


@pytest.mark.parametrize("options, message", [
    (dict(layer_structure=(2, 1)), "start and end with 1"),
    (dict(layer_structure=(1, 0.001, 1)), "width 0 for context width 384"),
    (dict(activation="relu7"), "unknown activation"),
    (dict(dropout=(0, 1.5, 0)), "dropout_structure"),
    (dict(weight_init="Uniform"), "unknown weight_init"),
    (dict(activation="threshold"), "needs arguments"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        Hypernetwork.create([D], **options)


class _Payload:
    """Unpickling this calls _ran: what a malicious file would do."""

    def __reduce__(self):
        return (_ran, ("unpickled",))


RAN: list = []


def _ran(what):
    RAN.append(what)
    return what


def test_pickled_objects_are_refused_and_never_run(tmp_path):
    path = tmp_path / "evil.pt"
    save_hypernetwork(Hypernetwork.create([D], layer_structure=(1, 1)), path)
    state = torch.load(path, weights_only=True)
    state["optional_info"] = _Payload()
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="was refused.*Nothing in it was run"):
        load_hypernetwork(path)
    assert RAN == []


def test_missing_file_width_and_foreign_file_errors(tmp_path, unet):
    with pytest.raises(CheckpointError, match="no such file"):
        load_hypernetwork(tmp_path / "nope.pt")
    hn = Hypernetwork.create([768, 1024], layer_structure=(1, 1))
    with pytest.raises(ValueError, match=r"context widths \[768, 1024\].*needs \[384\]"):
        hn.attach(unet)
    assert not hn.attached
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="no hypernetwork MLPs"):
        load_hypernetwork(tmp_path / "model.pt")
    bad = {D: ({"linear.0.weight": torch.zeros(1)}, {})}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="384-wide k MLP does not match the options"):
        load_hypernetwork(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"give a \.pt .* or \.safetensors"):
        save_hypernetwork(hn, tmp_path / "hn.bin")


def test_second_attach_is_refused_or_replaces(unet, inputs):
    first = trained(Hypernetwork.create([D], name="first"))
    second = trained(Hypernetwork.create([D], name="second"), seed=7)
    first.attach(unet)
    try:
        with pytest.raises(ValueError, match="already attached; call detach"):
            first.attach(unet)
        with pytest.raises(ValueError, match="already has hypernetwork 'first' attached"):
            second.attach(unet)
        second.attach(unet, replace=True)
        assert not first.attached and second.attached
        got = run(unet, inputs)
    finally:
        first.detach()
        second.detach()
    second.attach(unet)
    assert torch.equal(run(unet, inputs), got)
    second.detach()
    assert all(not layer._forward_pre_hooks for b in blocks(unet)
               for layer in (b.attn2.to_k, b.attn2.to_v))


def test_self_attention_option_hooks_attn1_of_matching_width(unet, inputs):
    hn = trained(Hypernetwork.create([D, 64], layer_structure=(1, 1)))  # tiny: features 64 wide
    hn.attach(unet, self_attention=True)
    try:
        assert all(len(b.attn1.to_k._forward_pre_hooks) == 1 for b in blocks(unet))
        hooked = run(unet, inputs)
    finally:
        hn.detach()
    hn.attach(unet)
    try:
        assert not torch.equal(run(unet, inputs), hooked)
    finally:
        hn.detach()


def test_training_sends_gradients_only_to_the_hypernetwork(unet, inputs):
    hn = Hypernetwork.create([D], activation="relu", dropout=0.1).train()
    unet.requires_grad_(False)
    try:
        hn.attach(unet)
        unet(*inputs).square().mean().backward()
    finally:
        hn.detach()
        unet.requires_grad_(True)
    assert all(p.grad is None for p in unet.parameters())
    grads = [p.grad for p in hn.parameters()]
    assert all(g is not None for g in grads) and all(g.abs().sum() > 0 for g in grads)
