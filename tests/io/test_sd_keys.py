"""Stable Diffusion single-file names <-> ldmkit/diffusers names (ldmkit.io.sd_keys).

Round trips are exact; against an independent reference, diffusers' own LDM converters
(diffusers.loaders.single_file_utils) turn what we write back into the state dict we started
from; bad inputs are refused by name; ldmkit's models load the converted dicts strictly.
Every tensor gets its own random values first, so a swap of two same-shape tensors shows.
"""

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from nets.test_unet import diffusers_kwargs  # UNetConfig -> the same UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ldmkit.autoencoders import AE_PRESETS, Autoencoder, AutoencoderConfig
from ldmkit.io.sd_keys import (
    clip_ldm_to_transformers,
    clip_transformers_to_ldm,
    open_clip_to_transformers,
    transformers_to_open_clip,
    unet_diffusers_to_ldm,
    unet_ldm_to_diffusers,
    vae_diffusers_to_ldm,
    vae_ldm_to_diffusers,
)
from ldmkit.nets import UNET_PRESETS, UNet, UNetConfig

TINY = UNET_PRESETS["tiny"]                                   # SD v1-like: conv projections
V2 = UNetConfig(base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=2, attn_levels=(0, 2),
                num_heads=None, head_dim=8, transformer_depth=2, context_dim=24,
                use_linear_projection=True, norm_groups=8)   # level 1 without attention
CLASSES = dataclasses.replace(TINY, num_classes=5)
NO_MID = dataclasses.replace(TINY, mid_attention=False)       # diffusers cannot build these two
UNCOND = UNET_PRESETS["tiny-uncond"]
UNETS = {"tiny": TINY, "v2": V2, "classes": CLASSES, "no-mid": NO_MID, "uncond": UNCOND}
DIFFUSERS_UNETS = ["tiny", "v2", "classes"]

VAES = {"tiny": AE_PRESETS["tiny"],
        "3-levels": AutoencoderConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=2,
                                      norm_groups=4)}

# Names in the SD v1.x and v2.x single files (both have this UNet layout).
SD_NAMES = ("input_blocks.3.0.op.weight", "input_blocks.4.0.skip_connection.weight",
            "input_blocks.11.0.out_layers.3.bias", "middle_block.2.emb_layers.1.weight",
            "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
            "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight",
            "output_blocks.8.2.conv.weight",
            "output_blocks.11.1.proj_out.weight", "time_embed.2.bias", "out.0.weight")

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
CLIP_PREFIX, OPEN_CLIP_PREFIX = "cond_stage_model.transformer.", "cond_stage_model.model."


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def randomised(state, seed=0):
    """The same names and shapes, every float tensor filled with its own random numbers."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() else v
            for k, v in state.items()}


def assert_same(got, want):
    assert sorted(got) == sorted(want), (sorted(set(got) - set(want))[:5],
                                         sorted(set(want) - set(got))[:5])
    for k in want:
        assert torch.equal(got[k], want[k]), k


def prefixed(prefix, state):
    return {prefix + k: v for k, v in state.items()}


def ldmkit_state(module_cls, config, seed=0):
    return randomised(module_cls(config).state_dict(), seed)


def diffusers_kl(c: AutoencoderConfig) -> AutoencoderKL:
    """The AutoencoderKL with the same layout as config c."""
    levels = len(c.channel_mult)
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels,
                         block_out_channels=tuple(c.level_channels(i) for i in range(levels)),
                         layers_per_block=c.num_res_blocks, latent_channels=c.latent_channels,
                         norm_num_groups=c.norm_groups, in_channels=c.in_channels,
                         out_channels=c.out_channels)


def tiny_clip(layers=2, width=8) -> CLIPTextModel:
    """A CLIP text tower with OpenCLIP's 4x MLP, tiny: `width` wide, 5 positions, 11 tokens."""
    return CLIPTextModel(CLIPTextConfig(vocab_size=11, hidden_size=width,
                                        intermediate_size=4 * width, num_hidden_layers=layers,
                                        num_attention_heads=2, max_position_embeddings=5,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))


def with_text_model(state):
    """transformers >= 5.6 names CLIPTextModel's keys without "text_model."; the LDM files,
    hub files and our functions use it."""
    return {k if k.startswith("text_model.") else "text_model." + k: v for k, v in state.items()}


def for_model(state, model):
    """Our "text_model." keys, as this transformers version's model names its own."""
    if hasattr(model, "text_model"):
        return dict(state)
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def random_open_clip(layers, width, vocab=11, length=5, proj=6, seed=0):
    """An OpenCLIP text tower's state dict as SD v2 stores it (unprefixed), random values."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"token_embedding.weight": (vocab, width), "positional_embedding": (length, width),
              "ln_final.weight": (width,), "ln_final.bias": (width,),
              "text_projection": (width, proj), "logit_scale": ()}
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        shapes |= {b + "attn.in_proj_weight": (3 * width, width),
                   b + "attn.in_proj_bias": (3 * width,),
                   b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
                   b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,),
                   b + "mlp.c_proj.weight": (width, 4 * width), b + "mlp.c_proj.bias": (width,)}
        for ln in ("ln_1", "ln_2"):
            shapes |= {f"{b}{ln}.weight": (width,), f"{b}{ln}.bias": (width,)}
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


# --------------------------------------------------------------------------- 1. round trips

@pytest.mark.parametrize("name", list(UNETS))
def test_unet_round_trip_is_exact(name):
    c = UNETS[name]
    state = ldmkit_state(UNet, c)                  # ldmkit's names are diffusers'
    ldm = unet_diffusers_to_ldm(state, c)
    assert not any(k.startswith(("down_blocks", "up_blocks", "mid_block")) for k in ldm)
    assert_same(unet_ldm_to_diffusers(ldm, c), state)


@pytest.mark.parametrize("name", list(VAES))
def test_vae_round_trip_is_exact(name):
    c = VAES[name]
    state = ldmkit_state(Autoencoder, c)
    ldm = vae_diffusers_to_ldm(state, c)
    assert ldm["decoder.mid.attn_1.q.weight"].shape[2:] == (1, 1)             # 1x1 conv in LDM
    assert_same(vae_ldm_to_diffusers(ldm, c), state)


def test_text_encoder_round_trips_are_exact():
    state = with_text_model(randomised(tiny_clip().state_dict()))
    assert_same(clip_ldm_to_transformers(clip_transformers_to_ldm(state)), state)
    assert_same(open_clip_to_transformers(transformers_to_open_clip(state), num_layers=2), state)
    oc = random_open_clip(layers=3, width=8)
    back = transformers_to_open_clip(open_clip_to_transformers(oc, num_layers=3))
    assert_same(back, {k: v for k, v in oc.items() if k not in ("text_projection", "logit_scale")})


# --------------------------------------------------------------------------- 2. vs diffusers

@pytest.mark.parametrize("name", DIFFUSERS_UNETS)
def test_unet_agrees_with_diffusers_converter(name):
    c = UNETS[name]
    ref = UNet2DConditionModel(**diffusers_kwargs(c))
    state = randomised(ref.state_dict())
    ldm = unet_diffusers_to_ldm(state, c)
    assert_same(convert_ldm_unet_checkpoint(prefixed(UNET_PREFIX, ldm), ref.config), state)
    assert_same(unet_ldm_to_diffusers(ldm, c), state)


@pytest.mark.parametrize("name", list(VAES))
def test_vae_agrees_with_diffusers_converter(name):
    c = VAES[name]
    ref = diffusers_kl(c)
    state = randomised(ref.state_dict())
    ldm = vae_diffusers_to_ldm(state, c)
    assert_same(convert_ldm_vae_checkpoint(prefixed(VAE_PREFIX, ldm), ref.config), state)


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_sd_size_unet_names_agree_with_diffusers(name):
    """The real SD sizes on the meta device (no memory): every name and shape, 686 tensors."""
    c = UNET_PRESETS[name]
    with torch.device("meta"):
        ref = UNet2DConditionModel(**diffusers_kwargs(c))
    state = ref.state_dict()
    ldm = unet_diffusers_to_ldm(state, c)
    # diffusers' converter also accepts an upsampler at the wrong index, so pin some real names.
    assert set(SD_NAMES) <= set(ldm)
    back = convert_ldm_unet_checkpoint(prefixed(UNET_PREFIX, ldm), ref.config)
    assert sorted(back) == sorted(state)
    assert all(back[k] is state[k] for k in state)          # passed through, not copied


def test_sd_size_vae_names_agree_with_diffusers():
    c = AE_PRESETS["sd-vae"]
    with torch.device("meta"):
        ref = diffusers_kl(c)
    state = ref.state_dict()
    back = convert_ldm_vae_checkpoint(prefixed(VAE_PREFIX, vae_diffusers_to_ldm(state, c)),
                                      ref.config)
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in state.items()}


def test_open_clip_to_transformers_agrees_with_diffusers():
    """diffusers drops SD v2's last resblock by the hard-coded name resblocks.23, so a 24-layer
    (but 8-wide) tower makes its converter keep 23 layers, as our default does."""
    oc = random_open_clip(layers=24, width=8, proj=6)
    ref = tiny_clip(layers=23)                                # SD v2's num_hidden_layers=23
    # It drops text_projection (listed beside resblocks.23) and logit_scale (unmapped) too.
    theirs = convert_open_clip_checkpoint(ref, prefixed(OPEN_CLIP_PREFIX, oc))
    ours = open_clip_to_transformers(oc)
    assert_same(ours, theirs)
    assert ref.load_state_dict(for_model(ours, ref), strict=True)      # 4. loads strictly


def test_transformers_to_open_clip_agrees_with_diffusers():
    ref = tiny_clip(layers=2)
    state = with_text_model(randomised(ref.state_dict()))
    oc = transformers_to_open_clip(state)
    assert_same(convert_open_clip_checkpoint(ref, prefixed(OPEN_CLIP_PREFIX, oc)), state)


def test_clip_v1_agrees_with_diffusers_and_reads_old_layouts():
    ref = tiny_clip(layers=2)
    state = with_text_model(randomised(ref.state_dict()))
    ldm = clip_transformers_to_ldm(state)
    assert torch.equal(ldm["text_model.embeddings.position_ids"], torch.arange(5)[None])
    # diffusers only strips the prefix (and keeps position_ids, which transformers ignores).
    assert_same(convert_ldm_clip_checkpoint(prefixed(CLIP_PREFIX, ldm)), ldm)
    # Old files: no "text_model." level, position_ids stored (even as floats in merged files).
    old = {k.removeprefix("text_model."): v for k, v in ldm.items()}
    old["embeddings.position_ids"] = old["embeddings.position_ids"].float()
    ours = clip_ldm_to_transformers(old)
    assert_same(ours, state)
    assert ref.load_state_dict(for_model(ours, ref), strict=True)      # 4. loads strictly


# --------------------------------------------------------------------------- 3. refusals

def test_unknown_and_missing_keys_are_refused_by_name():
    ldm = unet_diffusers_to_ldm(ldmkit_state(UNet, TINY), TINY)
    with pytest.raises(ValueError, match=r"1 unrecognised key.*'input_blocks\.99\.0\.op\.weight'"):
        unet_ldm_to_diffusers(ldm | {"input_blocks.99.0.op.weight": torch.zeros(1)}, TINY)
    with pytest.raises(ValueError, match=r"1 missing key.*'out\.2\.weight'.*UNetConfig"):
        unet_ldm_to_diffusers({k: v for k, v in ldm.items() if k != "out.2.weight"}, TINY)
    with pytest.raises(ValueError, match="missing key.*'label_emb.weight'"):   # wrong config
        unet_ldm_to_diffusers(ldm, CLASSES)
    with pytest.raises(ValueError, match=r"unrecognised.*missing"):
        unet_ldm_to_diffusers(ldm, V2)
    with pytest.raises(ValueError, match="other layout's names"):              # LDM names given
        unet_diffusers_to_ldm(ldm, TINY)

    c = VAES["tiny"]
    vae = vae_diffusers_to_ldm(ldmkit_state(Autoencoder, c), c)
    with pytest.raises(ValueError, match=r"missing key.*'encoder\.mid\.attn_1\.k\.bias'"):
        vae_ldm_to_diffusers({k: v for k, v in vae.items() if "attn_1.k.bias" not in k}, c)
    with pytest.raises(ValueError, match=r"unrecognised key.*'model_ema\.decay'"):
        vae_ldm_to_diffusers(vae | {"model_ema.decay": torch.zeros(())}, c)
    with pytest.raises(ValueError, match="kind 'vq'"):
        vae_ldm_to_diffusers(vae, dataclasses.replace(c, kind="vq"))

    clip = clip_transformers_to_ldm(with_text_model(tiny_clip().state_dict()))
    with pytest.raises(ValueError, match=r"missing key.*'text_model\.encoder\.layers\.0\.mlp"):
        clip_ldm_to_transformers({k: v for k, v in clip.items() if "layers.0.mlp" not in k})
    with pytest.raises(ValueError, match=r"unrecognised key.*'text_model\.pooler"):
        clip_ldm_to_transformers(clip | {"text_model.pooler.weight": torch.zeros(1)})

    oc = random_open_clip(layers=3, width=8)
    with pytest.raises(ValueError, match=r"missing key.*'transformer\.resblocks\.1\.ln_2\.bias'"):
        open_clip_to_transformers({k: v for k, v in oc.items() if "1.ln_2.bias" not in k})
    with pytest.raises(ValueError, match=r"unrecognised key.*'visual\.proj'"):
        open_clip_to_transformers(oc | {"visual.proj": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"num_layers must lie in 1\.\.3"):
        open_clip_to_transformers(oc, num_layers=4)


# --------------------------------------------------------------------------- 4. strict loads

@pytest.mark.parametrize("name", list(UNETS))
def test_ldmkit_unet_loads_converted_dict_strictly(name):
    c = UNETS[name]
    state = ldmkit_state(UNet, c, seed=1)
    net = UNet(c)
    net.load_state_dict(unet_ldm_to_diffusers(unet_diffusers_to_ldm(state, c), c), strict=True)
    assert_same(net.state_dict(), state)


@pytest.mark.parametrize("name", list(VAES))
def test_ldmkit_autoencoder_loads_converted_dict_strictly(name):
    c = VAES[name]
    ref = diffusers_kl(c)
    ldm = vae_diffusers_to_ldm(randomised(ref.state_dict(), seed=2), c)
    ae = Autoencoder(c)
    ae.load_state_dict(vae_ldm_to_diffusers(ldm, c), strict=True)
    assert_same(ae.state_dict(), randomised(ref.state_dict(), seed=2))
