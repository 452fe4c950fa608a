"""The denoiser UNet: shapes, parameter counts and outputs against diffusers' UNet2DConditionModel
(an independent implementation), gradient checkpointing, input errors, and an overfit run."""

import dataclasses
import json
import math

import pytest
import torch
from diffusers import LatentConsistencyModelPipeline, UNet2DConditionModel
from diffusers.models.embeddings import Timesteps

from ldmkit.nets import UNET_PRESETS, UNet, UNetConfig, timestep_embedding

TINY = UNET_PRESETS["tiny"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def diffusers_kwargs(c: UNetConfig) -> dict:
    """The UNet2DConditionModel arguments that build the same network as config c."""
    assert c.channel_mult[0] == 1 and c.mid_attention and c.context_dim is not None
    levels = range(len(c.channel_mult))
    widths = tuple(c.base_channels * m for m in c.channel_mult)
    return dict(
        in_channels=c.in_channels, out_channels=c.out_channels, block_out_channels=widths,
        down_block_types=tuple("CrossAttnDownBlock2D" if i in c.attn_levels else "DownBlock2D"
                               for i in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if i in c.attn_levels else "UpBlock2D"
                             for i in reversed(levels)),
        layers_per_block=c.num_res_blocks,
        attention_head_dim=tuple(c.heads(w) for w in widths),  # diffusers' name for the head count
        transformer_layers_per_block=c.transformer_depth, cross_attention_dim=c.context_dim,
        use_linear_projection=c.use_linear_projection, norm_num_groups=c.norm_groups,
        num_class_embeds=c.num_classes, time_cond_proj_dim=c.guidance_embed_dim,
    )


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_timestep_embedding_matches_diffusers():
    t = torch.tensor([0.0, 1.0, 17.5, 999.0, 0.0291])  # fractional t: Karras sigmas
    for dim in (32, 320):
        ours = timestep_embedding(t, dim)
        ref = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)(t)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert timestep_embedding(torch.tensor(3.0), 8).shape == (1, 8)  # 0-d t
    assert timestep_embedding(5, 9).shape == (1, 9)                  # odd width: zero-padded


@pytest.mark.parametrize("name", list(UNET_PRESETS))
def test_output_shape(name):
    c = UNET_PRESETS[name]
    large = name.startswith("sd")
    size = 64 if large else 16
    # The SD presets are built and run on the meta device: shapes only, no memory, no time.
    with torch.device("meta" if large else "cpu"):
        net = UNet(c)
        x = torch.randn(2, c.in_channels, size, size)
        context = None if c.context_dim is None else torch.randn(2, 7, c.context_dim)
        with torch.no_grad():
            out = net(x, torch.tensor([10.0, 500.0]), context)
    assert out.shape == (2, c.out_channels, size, size)
    if not large:
        assert torch.isfinite(out).all()


def test_sd_parameter_counts_and_names_match_diffusers():
    for name, expected in (("sd1", 859_520_964), ("sd2", 865_910_724)):
        with torch.device("meta"):
            ours = UNet(UNET_PRESETS[name])
            ref = UNet2DConditionModel(**diffusers_kwargs(UNET_PRESETS[name]))
        assert n_params(ours) == expected == n_params(ref)
        ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
        assert ours_shapes == {k: v.shape for k, v in ref.state_dict().items()}


PARITY_CONFIGS = {
    # SD v1 style: fixed head count, 1x1-conv projections; attention at the lower level only.
    "heads-conv": TINY,
    # SD v2 style: fixed head width, linear projections; attention skips the middle level.
    "headdim-linear": UNetConfig(in_channels=4, out_channels=3, base_channels=32,
                                 channel_mult=(1, 2, 2), num_res_blocks=2, attn_levels=(0, 2),
                                 num_heads=None, head_dim=16, transformer_depth=2, context_dim=24,
                                 use_linear_projection=True, norm_groups=8),
    "classes": dataclasses.replace(TINY, num_classes=10),
    "lcm": dataclasses.replace(TINY, guidance_embed_dim=24),  # the guidance scale as an input
}


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_parity_with_diffusers(name):
    c = PARITY_CONFIGS[name]
    torch.manual_seed(0)
    ref = UNet2DConditionModel(**diffusers_kwargs(c)).eval()
    ours = UNet(c).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, c.in_channels, 16, 16, generator=g)
    t = torch.tensor([3.25, 801.0])
    context = torch.randn(2, 5, c.context_dim, generator=g)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    labels = torch.tensor([3, 7]) if c.num_classes else None
    guidance = torch.tensor([8.0, 2.5]) if c.guidance_embed_dim else None
    # diffusers' LCM pipeline embeds guidance - 1 itself and hands the UNet the embedding
    w_embedding = None if guidance is None else LatentConsistencyModelPipeline.get_guidance_scale_embedding(
        None, guidance - 1, embedding_dim=c.guidance_embed_dim)
    with torch.no_grad():
        expected = ref(x, t, context, class_labels=labels, encoder_attention_mask=mask,
                       timestep_cond=w_embedding).sample
        out = ours(x, t, context, context_mask=mask, class_labels=labels, guidance=guidance)
        unmasked = ours(x, t, context, class_labels=labels)
    assert expected.std() > 0.1  # a real signal, not zeros
    assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert not torch.allclose(unmasked, out)  # the mask did something


def test_timestep_broadcasts():
    net = UNet(UNET_PRESETS["tiny-uncond"]).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        outs = [net(x, t) for t in (5, torch.tensor(5), torch.tensor([5]), torch.tensor([5, 5]))]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0])


def randomize_(net):
    """Fresh UNets zero their output layers; give every weight a value so gradients flow."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    plain = UNet(TINY)
    randomize_(plain)
    ckpt = UNet(TINY, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    ckpt.down_blocks[1].attentions[0].register_forward_pre_hook(lambda *_: calls.append(1))

    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32)
    for net in (plain, ckpt):
        net(x, torch.tensor([1.0, 600.0]), context).square().mean().backward()
    assert len(calls) == 2  # forward, then recomputed in backward
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


CLASSES = dataclasses.replace(TINY, num_classes=10)
X, CTX = torch.zeros(2, 4, 8, 8), torch.zeros(2, 3, 32)
BAD_INPUTS = [
    (TINY, dict(x=torch.zeros(2, 3, 8, 8)), "x has 3 channels but the UNet's in_channels is 4"),
    (TINY, dict(x=torch.zeros(4, 8, 8)), r"x must be \(B, C, H, W\)"),
    (TINY, dict(x=torch.zeros(2, 4, 7, 8)),
     "x size 7x8 does not work: H and W must be multiples of 2"),
    (TINY, dict(t=torch.zeros(3)), r"t has shape \(3,\)"),
    (TINY, dict(t=torch.zeros(2, 1)), r"t has shape \(2, 1\)"),
    (TINY, dict(context=torch.zeros(2, 3, 16)),
     "context width 16 does not match the UNet's context_dim 32"),
    (TINY, dict(context=None), r"has cross-attention \(context_dim 32\) and needs a context"),
    (TINY, dict(context=torch.zeros(1, 3, 32)), "context must be"),
    (UNET_PRESETS["tiny-uncond"], dict(), "context was given but this UNet has no cross-attention"),
    (UNET_PRESETS["tiny-uncond"],
     dict(context=None, context_mask=torch.ones(2, 3, dtype=torch.bool)),
     "context_mask was given without a context"),
    (TINY, dict(context_mask=torch.zeros(2, 3, dtype=torch.bool)), "masks out every token"),
    (TINY, dict(context_mask=torch.ones(2, 3)), "context_mask must be a bool"),
    (TINY, dict(class_labels=torch.tensor([1, 2])), "class_labels were given but this UNet has no"),
    (CLASSES, dict(), r"class-conditional \(num_classes 10\) and needs class_labels"),
    (CLASSES, dict(class_labels=torch.tensor([1, 10])),
     r"must lie in \[0, 10\), got values from 1 to 10"),
    (CLASSES, dict(class_labels=torch.tensor([1.0, 2.0])), "class_labels must be integer labels"),
]


@pytest.mark.parametrize("config, change, message", BAD_INPUTS)
def test_bad_inputs_raise(config, change, message):
    net = UNet(config)
    args = dict(x=X, t=torch.tensor(1), context=CTX, context_mask=None, class_labels=None)
    with pytest.raises(ValueError, match=message):
        net(**{**args, **change})


@pytest.mark.parametrize("change, message", [
    (dict(base_channels=30), "30 is not divisible by norm_groups 32"),
    (dict(num_heads=8, head_dim=64), "exactly one of num_heads and head_dim"),
    (dict(num_heads=None), "exactly one of num_heads and head_dim"),
    (dict(attn_levels=(4,)), r"attn_levels \(4,\) must be distinct levels in 0..3"),
    (dict(num_heads=None, head_dim=48), "attention width 320 is not divisible by head_dim 48"),
    (dict(channel_mult=()), "channel_mult must name at least one level"),
    (dict(dropout=1.0), r"dropout must lie in \[0, 1\)"),
])
def test_bad_configs_raise(change, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**change)


def test_config_json_round_trip():
    c = UNET_PRESETS["sd2"]
    assert UNetConfig(**json.loads(json.dumps(c.to_dict()))) == c


def test_overfit_one_image_samples_it_back():
    """Train on one 3x8x8 image with the eps objective, then sample it back with DDIM (eta=0).

    With a single training image the optimal denoiser returns that image at every t, so DDIM
    from any noise lands on it; a net that learned it well gets close. Bound: 0.03, a tenth of
    mean(img^2) ~ 0.31 (the MSE of guessing zeros; also the fresh net's MSE once clipped) and
    ~1/40 of the noise's MSE. Seed 0 reaches 0.0054; seeds 1-3 reach 0.004 - 0.01.
    """
    from ldmkit.diffusion import as_denoiser, clip_x0, make_schedule, make_timesteps, sample_ddim

    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    img = 0.9 * torch.stack([torch.sin(math.pi * xx), torch.cos(math.pi * yy), xx * yy])[None]
    # No attention: the parity tests cover it, and it doubles the step time at this size.
    config = dataclasses.replace(UNET_PRESETS["tiny-uncond"], in_channels=3, out_channels=3,
                                 attn_levels=(), mid_attention=False)
    net = UNet(config)
    sched = make_schedule()  # LDM / SD scaled-linear betas
    alpha_bar = sched.alpha_bar.float()

    def sample_mse():
        net.eval()
        denoise = clip_x0(as_denoiser(net, sched, "eps"))  # pixel data in [-1, 1], as DDPM clips
        noise = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        x = sample_ddim(denoise, noise, sched, make_timesteps(sched, 50, "trailing"))
        net.train()
        return ((x - img) ** 2).mean().item()

    assert sample_mse() > 0.3

    steps, batch = 400, 48
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        t = ((torch.arange(batch) + torch.rand(batch)) * (1000 / batch)).long()  # stratified t
        eps = torch.randn(batch, 3, 8, 8)
        a = alpha_bar[t][:, None, None, None]
        x_t = a.sqrt() * img + (1 - a).sqrt() * eps                            # DDPM eq. 4
        loss = (net(x_t, t) - eps).square().mean()                             # DDPM eq. 14
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_schedule.step()

    assert sample_mse() < 0.03
