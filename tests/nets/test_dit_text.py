"""The text-conditioned DiT (PixArt-alpha's adaLN-single and cross-attention): the same numbers as
diffusers' PixArtTransformer2DModel, the text mask obeyed, clear errors, and a whole run (train,
save, generate) through the trainer with the tiny preset."""

import dataclasses

import pytest
import torch

from ldmkit.nets.dit import DiT
from ldmkit.nets.dit_config import DIT_PRESETS, DiTConfig

TINY_TEXT = DIT_PRESETS["tiny-text"]


def _from_diffusers_pixart(state: dict, depth: int, pos_embed: torch.Tensor) -> dict:
    """diffusers' PixArt keys -> ours (the test's own mapping: no PixArt checkpoint loads here,
    its T5 text encoder is not available offline)."""
    out = {"pos_embed": pos_embed, "x_embedder.weight": state["pos_embed.proj.weight"],
           "x_embedder.bias": state["pos_embed.proj.bias"], "final_layer.scale_shift_table": state["scale_shift_table"]}
    pairs = {"final_layer.linear": "proj_out", "t_embedder.mlp.0": "adaln_single.emb.timestep_embedder.linear_1",
             "t_embedder.mlp.2": "adaln_single.emb.timestep_embedder.linear_2", "t_block.1": "adaln_single.linear",
             "y_embedder.fc1": "caption_projection.linear_1", "y_embedder.fc2": "caption_projection.linear_2"}
    for i in range(depth):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        out[ours + "scale_shift_table"] = state[theirs + "scale_shift_table"]
        pairs |= {ours + "attn.proj": theirs + "attn1.to_out.0", ours + "cross_attn.q_linear": theirs + "attn2.to_q",
                  ours + "cross_attn.proj": theirs + "attn2.to_out.0", ours + "mlp.fc1": theirs + "ff.net.0.proj",
                  ours + "mlp.fc2": theirs + "ff.net.2"}
        for kind in ("weight", "bias"):
            out[f"{ours}attn.qkv.{kind}"] = torch.cat([state[f"{theirs}attn1.to_{x}.{kind}"] for x in "qkv"])
            out[f"{ours}cross_attn.kv_linear.{kind}"] = torch.cat([state[f"{theirs}attn2.to_{x}.{kind}"] for x in "kv"])
    for kind in ("weight", "bias"):
        out |= {f"{ours}.{kind}": state[f"{theirs}.{kind}"] for ours, theirs in pairs.items()}
    return out


def test_same_numbers_as_diffusers_pixart():
    diffusers = pytest.importorskip("diffusers")
    config = dataclasses.replace(TINY_TEXT, learn_sigma=True)
    ref = diffusers.PixArtTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, caption_channels=384, cross_attention_dim=64, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.1)
    ours = DiT(config).eval()
    ours.load_state_dict(_from_diffusers_pixart(ref.state_dict(), config.depth, ours.pos_embed))
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([5, 901]), torch.randn(2, 7, 384)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False  # the second caption is 4 tokens long
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask.long()).sample
        got = ours(x, t, context=text, context_mask=mask)
    assert expected.std() > 0.1 and (got - expected).abs().max() < 1e-4 * expected.abs().max()


def test_masked_text_positions_are_ignored_and_the_text_matters():
    net = DiT(TINY_TEXT).eval()
    with torch.no_grad():
        for block in net.blocks:  # PixArt zero-initialises the cross-attention's output: wake it
            block.cross_attn.proj.weight.normal_(0, 0.1)
        net.final_layer.linear.weight.normal_(0, 0.1)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    text = torch.randn(1, 6, 384)
    mask = torch.tensor([[True, True, True, False, False, False]])
    padded = text.clone()
    padded[:, 3:] = torch.randn(1, 3, 384)  # other padding
    with torch.no_grad():
        a = net(x, t, context=text, context_mask=mask)
        b = net(x, t, context=padded, context_mask=mask)
        c = net(x, t, context=torch.randn(1, 6, 384), context_mask=mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert (a - c).abs().max() > 1e-3


def test_text_dit_errors_name_the_value():
    net = DiT(TINY_TEXT)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([1])
    with pytest.raises(ValueError, match=r"context must be \(B, L, 384\), got None"):
        net(x, t)
    with pytest.raises(ValueError, match=r"got \(1, 5, 128\)"):
        net(x, t, context=torch.randn(1, 5, 128))
    with pytest.raises(ValueError, match="not class_labels"):
        net(x, t, context=torch.randn(1, 5, 384), class_labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="not both"):
        DiTConfig(context_dim=384, num_classes=10)
    with pytest.raises(ValueError, match="no text context"):
        DiT(DIT_PRESETS["tiny"])(x, t, context=torch.randn(1, 5, 384), class_labels=torch.tensor([1]))


def test_a_trained_text_dit_runs_every_image_task(tmp_path):
    import numpy as np
    from PIL import Image

    from ldmkit import Pipeline
    from ldmkit.train.diffusion import train_diffusion
    from ldmkit.train.diffusion_config import DIFFUSION_PRESETS

    train_diffusion(DIFFUSION_PRESETS["tiny-dit"], tmp_path / "run", progress=False)
    pipe = Pipeline.from_pretrained(tmp_path / "run" / "model")
    assert isinstance(pipe.net, DiT) and pipe.net.config.context_dim == 384
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    mask = Image.fromarray(np.where(np.arange(32)[None, :] >= 16, 255, 0).repeat(32, 0).astype(np.uint8))
    made = pipe.generate("a photo of a bag", steps=3, output="tensor")
    changed = pipe.img2img(image, "a photo of a bag", strength=0.5, steps=4, output="tensor")
    filled = pipe.inpaint(image, mask, "a photo of a bag", steps=4, output="tensor")
    assert made.shape == changed.shape == filled.shape == (1, 1, 32, 32)
    original = torch.from_numpy(np.array(image)).float() / 127.5 - 1
    # the kept half stays close to the image (up to the first stage), the masked half is new
    error = (filled[0, 0] - original).abs()
    assert error[:, :12].mean() < error[:, 20:].mean()
