"""LoRA: hooks, merging and the kohya / diffusers files, on tiny UNets and a tiny SD v1 model.

The file names are checked against diffusers' own kohya converter and, when peft is installed,
against diffusers' load_lora_weights on the same model (same UNet and text encoder outputs)."""

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from benchmarks.sd_models import save_reference, tiny_sd
from ldmkit import Pipeline
from ldmkit.finetune.lora import LoRANetwork
from ldmkit.finetune.lora_formats import apply_lora, load_lora, save_lora
from ldmkit.nets import UNet
from ldmkit.nets.config import UNetConfig
from ldmkit.storage import read_safetensors_metadata

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]

CONFIG = UNetConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(0, 1), num_heads=4,
                    context_dim=16, norm_groups=8)
ALL = ("attention", "feed_forward", "conv")


def tiny_unet(config: UNetConfig = CONFIG, seed: int = 0) -> UNet:
    """Random weights everywhere (no zero-initialised layers), so every adapter shows."""
    torch.manual_seed(seed)
    unet = UNet(config).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def unet_inputs(context_dim: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, context_dim, generator=g)
    return x, torch.tensor([10.0, 500.0]), context


def randomize(network: LoRANetwork, seed: int = 2, std: float = 0.1) -> LoRANetwork:
    """Trained-looking adapters: B != 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, adapter in network.items():
            adapter.up.weight.copy_(std * torch.randn(adapter.up.weight.shape, generator=g))
    return network


@torch.no_grad()
def run(unet, inputs):
    return unet(*inputs)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A tiny SD v1 model saved as diffusers does."""
    folder = tmp_path_factory.mktemp("sd-v1")
    save_reference(tiny_sd("v1"), folder, "v1")
    return folder


# --------------------------------------------------------------------------- adapters and hooks

def test_fresh_lora_changes_nothing_and_only_adapters_train():
    unet = tiny_unet().requires_grad_(False)
    inputs = unet_inputs()
    before = run(unet, inputs)
    network = LoRANetwork.create({"unet": unet}, rank=4, targets=ALL).attach({"unet": unet})
    # equal up to rounding: a hooked upsampler conv runs on the upsampled input, an unhooked one
    # on the small grid (ldmkit/nets/upsample.py); every adapter adds exact zeros
    torch.testing.assert_close(run(unet, inputs), before, rtol=1e-5, atol=1e-6)

    paths = {path for (_, path), _ in network.items()}
    assert {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0", "mid_block.attentions.0.proj_in",
            "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj", "down_blocks.1.resnets.0.conv_shortcut",
            "down_blocks.0.downsamplers.0.conv", "up_blocks.0.upsamplers.0.conv"} <= paths
    assert not any("time_emb_proj" in p or p in ("conv_in", "conv_out") for p in paths)
    assert len(LoRANetwork.create({"unet": unet}, targets="attention")) == 4 * 2 * 7  # q k v out, attn1/2, 7 blocks

    # Trainable parameters are the adapters' own; a loss reaches them through the hooks.
    assert all(name.startswith("adapters.") for name, _ in network.named_parameters())
    unet(*inputs).square().mean().backward()
    assert all(p.grad is not None for p in network.parameters())
    assert all(p.grad is None for p in unet.parameters())


def test_merge_matches_hooks_and_unmerge_restores_the_weights():
    unet, inputs = tiny_unet(), unet_inputs()
    original = {k: v.clone() for k, v in unet.state_dict().items()}
    before = run(unet, inputs)
    network = randomize(LoRANetwork.create({"unet": unet}, rank=4, alpha=2.0, targets=ALL))

    network.attach({"unet": unet}, scale=0.7)
    hooked = run(unet, inputs)
    assert (hooked - before).abs().max() > 1e-2 * before.abs().max()
    with pytest.raises(ValueError, match="detach\\(\\) it before merging"):
        network.merge({"unet": unet})
    network.detach()
    assert torch.equal(run(unet, inputs), before)  # detach restores the outputs exactly

    network.merge({"unet": unet}, scale=0.7)
    assert (run(unet, inputs) - hooked).abs().max() < 1e-5
    with pytest.raises(ValueError, match="unmerge"):
        network.set_scale(1.0)
    network.unmerge()
    assert all((unet.state_dict()[k] - v).abs().max() < 1e-6 for k, v in original.items())


def test_scale_zero_and_detach_give_the_base_model_exactly():
    unet, inputs = tiny_unet(), unet_inputs()
    before = run(unet, inputs)
    network = randomize(LoRANetwork.create({"unet": unet}, targets=("attention", "feed_forward")))
    network.attach({"unet": unet})
    changed = run(unet, inputs)
    network.set_scale(0.0)
    assert torch.equal(run(unet, inputs), before)
    network.set_scale(1.0)
    assert torch.equal(run(unet, inputs), changed)
    network.detach()
    assert torch.equal(run(unet, inputs), before)


def test_a_lora_on_a_dit_targets_the_layers_it_names():
    from ldmkit.nets.dit import DiT
    from ldmkit.nets.dit_config import DIT_PRESETS

    torch.manual_seed(0)
    dit = DiT(DIT_PRESETS["tiny-text"]).eval()
    for block in dit.blocks:  # wake PixArt's zero-initialised outputs, so that every adapter counts
        torch.nn.init.normal_(block.cross_attn.proj.weight, std=0.1)
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.1)
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 5, 384))
    before = run(dit, inputs)
    network = randomize(LoRANetwork.create({"unet": dit}, rank=4, targets=("attention", "feed_forward")))
    paths = {path for (_, path), _ in network.items()}
    assert paths == {f"blocks.{i}.{layer}" for i in range(2) for layer in
                     ("attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear", "cross_attn.proj",
                      "mlp.fc1", "mlp.fc2")}
    with pytest.raises(ValueError, match="no layer .* matches the targets \\['conv'\\]"):
        LoRANetwork.create({"unet": dit}, targets="conv")
    network.attach({"unet": dit})
    hooked = run(dit, inputs)
    assert (hooked - before).abs().max() > 1e-2 * before.abs().max()
    network.detach()
    network.merge({"unet": dit})
    assert (run(dit, inputs) - hooked).abs().max() < 1e-5


def test_dropout_acts_in_training_only():
    unet, inputs = tiny_unet(), unet_inputs()
    network = randomize(LoRANetwork.create({"unet": unet}, dropout=0.5)).attach({"unet": unet})
    network.eval()
    assert torch.equal(run(unet, inputs), run(unet, inputs))
    network.train()
    assert not torch.equal(run(unet, inputs), run(unet, inputs))


def test_two_loras_add_their_scaled_deltas():
    unet, inputs = tiny_unet(), unet_inputs()
    a = randomize(LoRANetwork.create({"unet": unet}, rank=4, alpha=1.0, targets=ALL), seed=3)
    b = randomize(LoRANetwork.create({"unet": unet}, rank=2, targets=ALL), seed=4)
    a.attach({"unet": unet}, scale=0.5)
    b.attach({"unet": unet}, scale=1.0)

    # One layer: W x + 0.5 dW_a x + dW_b x, the deltas as merge() computes them.
    layer = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q
    name = ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q")
    x = torch.randn(3, 32)
    with torch.no_grad():
        expected = F.linear(x, layer.weight + 0.5 * a[name].weight_delta() + b[name].weight_delta())
        assert (layer(x) - expected).abs().max() < 1e-5

    # The whole UNet: both hooked equals both merged.
    hooked = run(unet, inputs)
    a.detach(), b.detach()
    a.merge({"unet": unet}, 0.5), b.merge({"unet": unet}, 1.0)
    assert (run(unet, inputs) - hooked).abs().max() < 1e-5


def test_create_refuses_bad_settings():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="targets must be one or more of"):
        LoRANetwork.create({"unet": unet}, targets=("attn",))
    with pytest.raises(ValueError, match="rank must be a positive int"):
        LoRANetwork.create({"unet": unet}, rank=0)
    with pytest.raises(ValueError, match="hold no 'text_encoder'"):
        LoRANetwork.create({"unet": unet}, text_encoder=True)
    with pytest.raises(ValueError, match="unknown component"):
        LoRANetwork.create({"vae": unet})
    network = LoRANetwork.create({"unet": unet}).attach({"unet": unet})
    with pytest.raises(ValueError, match="already attached"):
        network.attach({"unet": unet})


# --------------------------------------------------------------------------- files

ODD_ALPHAS = {("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"): 1.0,
              ("text_encoder", "text_model.encoder.layers.1.mlp.fc2"): 8.0}


def sd_lora(pipe: Pipeline, seed: int = 2) -> LoRANetwork:
    """Every target of a tiny SD model, alpha 2 at rank 4, but for two layers of other alphas."""
    network = randomize(LoRANetwork.create(pipe, rank=4, alpha=2.0, targets=ALL, text_encoder=True), seed=seed)
    for name, alpha in ODD_ALPHAS.items():
        network[name].alpha = alpha
    return network


def assert_same_network(a: LoRANetwork, b: LoRANetwork):
    a, b = sorted(a.items()), sorted(b.items())
    assert [name for name, _ in a] == [name for name, _ in b]
    for (name, x), (_, y) in zip(a, b):
        assert (x.rank, x.alpha) == (y.rank, y.alpha), name
        assert torch.equal(x.down.weight, y.down.weight) and torch.equal(x.up.weight, y.up.weight), name


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_files_load_back_to_the_same_tensors(sd_folder, tmp_path, layout):
    pipe = Pipeline.from_pretrained(sd_folder)
    network = sd_lora(pipe)
    path = save_lora(network, tmp_path / "lora.safetensors", layout=layout, metadata={"ss_output_name": "cat"})
    back = load_lora(path, pipe)
    assert_same_network(back, network)
    assert not back.attached and back.components == {"unet", "text_encoder"}

    meta = read_safetensors_metadata(path)
    assert meta["ss_output_name"] == "cat"
    if layout == "kohya":
        assert meta["ss_network_module"] == "networks.lora"
        assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "Dynamic")  # two odd alphas
        assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2.0"}
        assert load_file(path)["lora_unet_mid_block_attentions_0_proj_in.alpha"].shape == ()
    else:
        config = json.loads(meta["lora_adapter_metadata"])
        assert (config["unet.r"], config["unet.lora_alpha"], config["text_encoder.lora_alpha"]) == (4, 2.0, 2.0)
        assert config["unet.alpha_pattern"] == {"mid_block.attentions.0.transformer_blocks.0.attn2.to_k": 1.0}
        assert config["text_encoder.alpha_pattern"] == {"encoder.layers.1.mlp.fc2": 8.0}  # PEFT: a suffix

    half = load_file(save_lora(network, tmp_path / "half.safetensors", layout=layout, dtype=torch.float16))
    assert {t.dtype for k, t in half.items() if not k.endswith(".alpha")} == {torch.float16}


def test_old_diffusers_layout_loads(sd_folder, tmp_path):
    pipe = Pipeline.from_pretrained(sd_folder)
    network = randomize(LoRANetwork.create(pipe, rank=2, text_encoder=True))
    new = load_file(save_lora(network, tmp_path / "new.safetensors", layout="diffusers"))
    old = {}  # attention processors (no "unet." prefix in those files) and CLIP's to_q_lora
    for key, value in new.items():
        role = "down" if ".lora_A." in key else "up"
        for layer, short in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out.0", "to_out"),
                             ("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"), ("out_proj", "to_out")):
            stem = key.split(".lora_")[0]
            if stem.endswith("." + layer):
                processor = ".processor" if key.startswith("unet.") else ""
                old_key = f"{stem[: -len(layer) - 1]}{processor}.{short}_lora.{role}.weight"
                old[old_key.removeprefix("unet.")] = value
    assert len(old) == len(new)
    save_file(old, tmp_path / "old.safetensors")
    assert_same_network(load_lora(tmp_path / "old.safetensors", pipe), network)


def test_kohya_names_are_the_ones_diffusers_converts(sd_folder, tmp_path):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from diffusers.utils.state_dict_utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    pipe = Pipeline.from_pretrained(sd_folder)
    network = sd_lora(pipe)
    kohya = load_file(save_lora(network, tmp_path / "lora.safetensors"))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in kohya

    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(kohya))
    unet = convert_unet_state_dict_to_peft({k: v for k, v in converted.items() if k.startswith("unet.")})
    text = convert_state_dict_to_peft({k: v for k, v in converted.items() if k.startswith("text_encoder.")})
    expected = {}
    for (component, path), adapter in network.items():
        expected[f"{component}.{path}.lora_A.weight"] = adapter.down.weight
        expected[f"{component}.{path}.lora_B.weight"] = adapter.up.weight
    assert sorted(unet | text) == sorted(expected)
    assert all(torch.equal((unet | text)[k], v) for k, v in expected.items())
    assert len(alphas) == len(network) and sorted(set(alphas.values())) == [1.0, 2.0, 8.0]


def test_a_lora_for_another_model_is_refused(tmp_path):
    wide = replace(CONFIG, base_channels=64)  # every layer twice as wide
    path = save_lora(LoRANetwork.create({"unet": tiny_unet()}, rank=4), tmp_path / "lora.safetensors")
    keys = load_file(path)
    first = min(k for k in keys if k.endswith("lora_down.weight"))
    with pytest.raises(ValueError, match=rf"{first}' has shape \(4, 32\).*needs \(4, 64\)"):
        load_lora(path, {"unet": tiny_unet(wide)})

    network = load_lora(path, {"unet": tiny_unet()})  # attach() checks too
    with pytest.raises(ValueError, match="needs adapter weights .*made for another model"):
        network.attach({"unet": tiny_unet(wide)})

    extra = {**keys, "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32, 1, 1),
             "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4, 1, 1)}
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(ValueError, match="lora_unet_down_blocks_7_attentions_0_proj_in.* names no layer"):
        load_lora(tmp_path / "extra.safetensors", {"unet": tiny_unet()})

    for key, what in (("lora_unet_mid_block_attentions_0_proj_in.hada_w1_a", "not part of a plain kohya LoRA"),
                      ("lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha", "SDXL"),
                      ("unet.down_blocks.7.attentions.0.proj_in.lora_A.weight", "which this model does not have"),
                      ("text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
                       "adapts the text_encoder, which the model given lacks"),
                      ("model.diffusion_model.out.2.weight", "holds no LoRA")):
        save_file({key: torch.zeros(())}, tmp_path / "odd.safetensors")
        with pytest.raises(ValueError, match=what):
            load_lora(tmp_path / "odd.safetensors", {"unet": tiny_unet()})

    with pytest.raises(FileNotFoundError, match="no LoRA file .*missing.safetensors"):
        load_lora(tmp_path / "missing.safetensors", {"unet": tiny_unet()})
    no_clip = SimpleNamespace(unet=tiny_unet(), text_encoder=None)
    with pytest.raises(ValueError, match="needs a CLIP text encoder"):
        LoRANetwork.create(no_clip, text_encoder=True)


def test_apply_lora_stacks_files_with_their_own_scales(sd_folder, tmp_path):
    pipe = Pipeline.from_pretrained(sd_folder)
    inputs = unet_inputs(context_dim=64)
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    before = run(pipe.unet, inputs)
    a = save_lora(sd_lora(pipe, seed=3), tmp_path / "a.safetensors")
    b = save_lora(sd_lora(pipe, seed=4), tmp_path / "b.safetensors", layout="diffusers")
    first, second = apply_lora(pipe, a, scale=0.5), apply_lora(pipe, b, scale=1.0)
    hooked = run(pipe.unet, inputs)
    text = pipe.text_encoder(["a lower photo"])[0]
    first.detach(), second.detach()
    assert torch.equal(run(pipe.unet, inputs), before)

    merged = [apply_lora(pipe, a, scale=0.5, merge=True), apply_lora(pipe, b, scale=1.0, merge=True)]
    assert (run(pipe.unet, inputs) - hooked).abs().max() < 1e-5
    assert (pipe.text_encoder(["a lower photo"])[0] - text).abs().max() < 1e-5
    for network in merged:
        network.unmerge()
    assert all((pipe.unet.state_dict()[k] - v).abs().max() < 1e-6 for k, v in original.items())


def test_diffusers_load_lora_weights_gives_the_same_model(sd_folder, tmp_path):
    """diffusers + PEFT read our files into their pipeline; the networks must agree."""
    pytest.importorskip("peft")
    from diffusers import StableDiffusionPipeline

    ours = Pipeline.from_pretrained(sd_folder)
    theirs = StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
    network = sd_lora(ours)
    inputs = unet_inputs(context_dim=64)
    ids = theirs.tokenizer(["a lower photo"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    base = run(theirs.unet, inputs).sample
    for layout in ("kohya", "diffusers"):
        # diffusers 0.42 loses a kohya file's per-layer alphas (its alpha_pattern keeps the old
        # processor names, or "text_model." under transformers 5): give that file one alpha.
        for name in ODD_ALPHAS:
            network[name].alpha = 2.0 if layout == "kohya" else ODD_ALPHAS[name]
        path = save_lora(network, tmp_path / f"{layout}.safetensors", layout=layout)
        theirs.load_lora_weights(str(path), adapter_name=layout)
        theirs.set_adapters([layout], adapter_weights=[0.8])
        network.attach(ours, scale=0.8)
        with torch.no_grad():
            expected = theirs.unet(*inputs).sample
            assert (expected - base).abs().max() > 0.05 * base.abs().max()  # the LoRA did something
            assert (ours.unet(*inputs) - expected).abs().max() < 1e-5 * expected.abs().max(), layout
            text = theirs.text_encoder(ids)[0]
            assert (ours.text_encoder.model(ids).last_hidden_state - text).abs().max() < 1e-5 * text.abs().max()
        network.detach()
        theirs.delete_adapters(layout)
