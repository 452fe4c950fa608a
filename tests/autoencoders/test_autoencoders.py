"""The first stage against its maths and against diffusers' AutoencoderKL (test-only reference).

KL, NLL and sampling of the posterior; nearest codes, straight-through gradients, usage
statistics, the EMA codebook and dead-code restarts of the quantiser; the GAN losses and the
adaptive weight by hand; state-dict and output parity with diffusers; LPIPS's layout and file
loading on random weights; overfitting four images; and the errors bad input gets.
"""

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from ldmkit.autoencoders import (
    AE_PRESETS,
    LPIPS,
    Autoencoder,
    AutoencoderConfig,
    DiagonalGaussian,
    DiscriminatorFeatureLoss,
    PatchDiscriminator,
    VectorQuantizer,
    VGG16Features,
    adaptive_gan_weight,
    code_stats,
    hinge_d_loss,
    hinge_g_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
    perceptual_loss,
    reconstruction_loss,
)

TINY = AE_PRESETS["tiny"]


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def smooth_images(n=4, seed=0):
    """(n, 3, 16, 16) in [-1, 1]: random 4x4 colour fields upsampled, like blurry photos."""
    low = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return F.interpolate(low, size=16, mode="bicubic", align_corners=False).clamp(-1, 1)


def assert_rel_close(a, b, rel=1e-5):
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel} * {scale:.3g}"


# ----------------------------------------------------------------------------- KL posterior

def test_kl_of_standard_normal_is_zero():
    q = DiagonalGaussian.from_moments(torch.zeros(3, 8, 4, 4))                # mean 0, logvar 0
    assert torch.equal(q.kl(), torch.zeros(3))


def test_kl_and_nll_match_torch_distributions():
    mean, logvar = randn(2, 4, 5, 5, seed=1), 2 * randn(2, 4, 5, 5, seed=2)
    q = DiagonalGaussian(mean, logvar)
    ref = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    std_normal = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    kl_ref = torch.distributions.kl_divergence(ref, std_normal).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), kl_ref, rtol=1e-5, atol=1e-4)
    z = randn(2, 4, 5, 5, seed=3)
    torch.testing.assert_close(q.nll(z), -ref.log_prob(z).flatten(1).sum(1), rtol=1e-5, atol=1e-3)


def test_logvar_is_clamped_as_in_ldm():
    q = DiagonalGaussian(torch.zeros(1, 1, 1, 2), torch.tensor([-100.0, 100.0]).view(1, 1, 1, 2))
    assert q.logvar.flatten().tolist() == [-30.0, 20.0]


def test_sample_has_the_posterior_mean_and_std():
    shape = (1, 1, 400, 500)
    q = DiagonalGaussian(torch.full(shape, 0.5), torch.full(shape, math.log(4.0)))
    z = q.sample(torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(0.5, abs=0.02)                     # 200k draws
    assert z.std().item() == pytest.approx(2.0, rel=0.01)
    assert torch.equal(z, q.sample(torch.Generator().manual_seed(0)))         # seeded
    assert torch.equal(q.mode(), q.mean)


# ----------------------------------------------------------------------------- vector quantiser

def test_nearest_code_is_the_brute_force_argmin():
    vq = VectorQuantizer(64, 3)
    with torch.no_grad():
        vq.codebook.weight.copy_(randn(64, 3, seed=4))
    z = randn(2, 3, 5, 6, seed=5)
    codes = vq.nearest(z)                                                      # (B, H, W)
    vectors = z.permute(0, 2, 3, 1)                                            # (B, H, W, D)
    dist = ((vectors[..., None, :] - vq.codebook.weight) ** 2).sum(-1)        # (B, H, W, K)
    assert torch.equal(codes, dist.argmin(-1))
    assert torch.equal(vq.lookup(codes), vq.codebook.weight[codes].permute(0, 3, 1, 2))


def test_straight_through_passes_the_gradient_unchanged_to_the_encoder():
    encoder = torch.nn.Conv2d(3, 4, 1)
    vq = VectorQuantizer(16, 4).eval()
    with torch.no_grad():
        vq.codebook.weight.copy_(randn(16, 4, seed=6))
    z = encoder(randn(2, 3, 4, 4, seed=7))
    z.retain_grad()
    out = vq(z)
    assert torch.equal(out.z_q, vq.lookup(out.codes))                         # forward: the codes
    w = randn(*z.shape, seed=8)
    (out.z_q * w).sum().backward()                                             # dL/dz_q = w
    assert torch.equal(z.grad, w)
    assert encoder.weight.grad.abs().sum() > 0
    assert vq.codebook.weight.grad is None                                 # only via the loss


def test_codebook_and_commitment_losses():
    vq = VectorQuantizer(8, 2, beta=0.25).eval()
    z = randn(1, 2, 3, 3, seed=9).requires_grad_()
    out = vq(z)
    e = vq.lookup(out.codes).detach()
    assert out.codebook_loss.item() == pytest.approx(F.mse_loss(e, z.detach()).item())
    assert out.commitment_loss.item() == pytest.approx(F.mse_loss(z.detach(), e).item())
    assert out.loss.item() == pytest.approx(1.25 * out.commitment_loss.item())
    out.codebook_loss.backward()                                           # sg[z]: codebook only
    assert z.grad is None and vq.codebook.weight.grad.abs().sum() > 0
    ema = VectorQuantizer(8, 2, ema=True).eval()
    assert ema(z).codebook_loss.item() == 0.0 and not ema.codebook.weight.requires_grad


def test_perplexity_and_usage_on_crafted_batches():
    vq = VectorQuantizer(8, 2).eval()
    grid = torch.tensor([[10.0 * k, 0.0] for k in range(8)])
    with torch.no_grad():
        vq.codebook.weight.copy_(grid)
    one_code = grid[3].view(1, 2, 1, 1).expand(1, 2, 2, 4)                 # 8 vectors -> code 3
    out = vq(one_code)
    assert out.perplexity.item() == pytest.approx(1.0) and out.usage.item() == 1 / 8
    four_codes = grid[[0, 1, 2, 3, 0, 1, 2, 3]].T.reshape(1, 2, 2, 4)         # 2 vectors each
    out = vq(four_codes)
    assert out.perplexity.item() == pytest.approx(4.0) and out.usage.item() == 0.5
    perplexity, usage = code_stats(torch.tensor([6, 2, 0, 0]))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert perplexity.item() == pytest.approx(math.exp(entropy)) and usage.item() == 0.5


def test_ema_moves_a_used_code_toward_the_mean_of_its_vectors():
    """Appendix A.1: N_i <- g N_i + (1-g) n_i, m_i <- g m_i + (1-g) sum_j z_ij, e_i = m_i / N_i
    (N_i Laplace-smoothed); with m_i = N_i e_i before, e_i moves (1-g) n_i / N_i of the way to
    the mean of its vectors."""
    K, gamma, eps = 4, 0.9, 1e-5
    vq = VectorQuantizer(K, 2, ema=True, ema_decay=gamma, eps=eps)
    start = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    with torch.no_grad():
        vq.codebook.weight.copy_(start)
        vq.embed_sum.copy_(start)                                              # cluster_size is 1
    vectors = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 2.0], [9.0, 0.0]])  # 3 to e_0, 1 to e_1
    out = vq(vectors.T.reshape(1, 2, 1, 4))
    assert out.codes.flatten().tolist() == [0, 0, 0, 1]
    n = torch.tensor([3.0, 1.0, 0.0, 0.0])
    N = gamma * 1.0 + (1 - gamma) * n
    m = gamma * start + (1 - gamma) * torch.stack([vectors[:3].sum(0), vectors[3], torch.zeros(2),
                                                   torch.zeros(2)])
    smoothed = (N + eps) / (N.sum() + K * eps) * N.sum()
    torch.testing.assert_close(vq.cluster_size, N)
    torch.testing.assert_close(vq.codebook.weight, m / smoothed[:, None])
    mean0 = vectors[:3].mean(0)                                                # (1, 1)
    expected0 = start[0] + (1 - gamma) * 3 / N[0] * (mean0 - start[0])        # a quarter of the way
    torch.testing.assert_close(vq.codebook.weight[0], expected0, atol=1e-4, rtol=0)


def test_dead_codes_are_restarted_from_the_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema_decay=0.9, restart_dead_codes=True, dead_code_threshold=1.0)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [50.0, 50.0], [60.0, 60.0],
                                               [70.0, 70.0]]))
    z = (0.1 * randn(1, 2, 2, 4, seed=10)).requires_grad_()                   # all near code 0
    out = vq(z)
    assert out.codes.unique().tolist() == [0] and out.restarted == 3
    batch = z.detach().permute(0, 2, 3, 1).reshape(-1, 2)
    for k in (1, 2, 3):                                                        # N_k = 0.9 < 1: dead
        assert (vq.codebook.weight[k] == batch).all(1).any(), f"code {k} is not a batch vector"
    assert vq.codebook.weight[0].tolist() == [0.0, 0.0]                        # N_0 = 1.7: alive
    assert vq.cluster_size.tolist() == pytest.approx([1.7, 1.0, 1.0, 1.0])
    assert vq.used_share(window=10) == 0.25
    (out.loss + out.z_q.sum()).backward()                                      # graph survives


# ----------------------------------------------------------------------------- GAN losses

def test_gan_losses_on_known_logits():
    real, fake = torch.tensor([2.0, -0.5]), torch.tensor([-3.0, 0.5])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 1.5) / 2 + (0 + 1.5) / 2))
    assert hinge_g_loss(fake).item() == pytest.approx(1.25)

    def softplus(v):
        return math.log1p(math.exp(v))

    d = 0.5 * ((softplus(-2.0) + softplus(0.5)) / 2 + (softplus(-3.0) + softplus(0.5)) / 2)
    assert nonsaturating_d_loss(real, fake).item() == pytest.approx(d)
    g = (-math.log(1 / (1 + math.exp(3.0))) - math.log(1 / (1 + math.exp(-0.5)))) / 2
    assert nonsaturating_g_loss(fake).item() == pytest.approx(g)


def test_adaptive_gan_weight_equals_the_ratio_of_gradient_norms():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    last = net[2].weight
    x, target = randn(4, 3, seed=11), randn(4, 2, seed=12)

    def losses():
        y = net(x)
        return (y - target).abs().mean(), -(y * torch.tensor([1.0, -3.0])).mean()

    rec, gan = losses()
    weight = adaptive_gan_weight(rec, gan, last)
    grads = []
    for i in range(2):                                                         # fresh graphs
        net.zero_grad()
        losses()[i].backward()
        grads.append(last.grad.clone())
    expected = grads[0].norm() / (grads[1].norm() + 1e-4)                     # VQGAN eq. 7
    assert weight.item() == pytest.approx(expected.item(), rel=1e-6) and not weight.requires_grad
    (rec + weight * gan).backward()                                        # graphs were kept
    assert adaptive_gan_weight(*losses(), last, max_weight=0.1).item() == pytest.approx(0.1)


def test_reconstruction_loss():
    x, y = randn(2, 3, 4, 4, seed=13), randn(2, 3, 4, 4, seed=14)
    both = reconstruction_loss(x, y, l1=1.0, l2=0.5).item()
    assert both == pytest.approx(((x - y).abs().mean() + 0.5 * ((x - y) ** 2).mean()).item())
    with pytest.raises(ValueError, match="l1=0"):
        reconstruction_loss(x, y, l1=0, l2=0)


def test_patch_discriminator_shapes_and_init():
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_channels=3, base_channels=64, n_layers=3)
    logits, feats = disc(randn(2, 3, 64, 64), return_features=True)
    assert logits.shape == (2, 1, 6, 6) and len(feats) == 4                    # 64 -> 32 16 8 7 6
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert weights.mean().abs() < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert PatchDiscriminator(1, 8, 2, norm="group")(randn(1, 1, 28, 28)).shape == (1, 1, 5, 5)


# ------------------------------------------------------------------------- parity with diffusers

def _diffusers_kl(**kw):
    diffusers = pytest.importorskip("diffusers")
    levels = len(kw["block_out_channels"])
    return diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels,
                                   up_block_types=("UpDecoderBlock2D",) * levels, **kw)


def test_small_autoencoder_kl_matches_diffusers():
    torch.manual_seed(0)
    ref = _diffusers_kl(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                        latent_channels=4).eval()
    with torch.no_grad():
        for p in ref.parameters():                                             # norms too, not 1/0
            p.copy_(0.2 * torch.randn_like(p))
    ours = Autoencoder(AutoencoderConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                         norm_groups=8)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, z = randn(2, 3, 16, 16, seed=15), randn(2, 4, 8, 8, seed=16)
    with torch.no_grad():
        post_ref, post = ref.encode(x).latent_dist, ours.encode(x).posterior
        assert_rel_close(post.mean, post_ref.mean)
        assert_rel_close(post.logvar, post_ref.logvar)
        assert_rel_close(ours.decode(z), ref.decode(z).sample)
        assert_rel_close(ours(x, sample_posterior=False).reconstruction, ref(x).sample)


def test_sd_vae_preset_has_the_parameters_of_diffusers_sd_vae():
    with torch.device("meta"):
        ours = Autoencoder(AE_PRESETS["sd-vae"])
        ref = _diffusers_kl(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            latent_channels=4, norm_num_groups=32)
    assert sum(p.numel() for p in ours.parameters()) == 83_653_863
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert AE_PRESETS["sd-vae"].scaling_factor == ref.config.scaling_factor == 0.18215
    assert AE_PRESETS["sd-vae"].downsampling_factor == 8


# ----------------------------------------------------------------------------- LPIPS

VGG16_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
               (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512),
               (26, 512, 512), (28, 512, 512)]                                # torchvision vgg16()


def test_vgg16_features_have_torchvisions_layout():
    expected = {}
    for i, c_in, c_out in VGG16_CONVS:
        expected[f"features.{i}.weight"] = (c_out, c_in, 3, 3)
        expected[f"features.{i}.bias"] = (c_out,)
    with torch.device("meta"):
        vgg = VGG16Features()
    assert {k: tuple(v.shape) for k, v in vgg.state_dict().items()} == expected


def _random_lpips(seed=0):
    torch.manual_seed(seed)
    model = LPIPS()
    with torch.no_grad():
        for _name, p in model.heads.named_parameters():
            p.copy_(torch.rand_like(p))                                        # lpips keeps w >= 0
    return model


def test_lpips_is_zero_on_identical_images_and_positive_otherwise():
    model = _random_lpips()
    x, y = randn(2, 3, 32, 32, seed=17).tanh(), randn(2, 3, 32, 32, seed=18).tanh()
    with torch.no_grad():
        assert torch.equal(model(x, x), torch.zeros(2))
        d = model(x, y)
    assert d.shape == (2,) and (d > 0).all()


def test_lpips_from_files_round_trip_and_errors(tmp_path):
    from safetensors.torch import save_file

    src = _random_lpips()
    vgg_state = dict(src.vgg.state_dict(), **{"classifier.0.weight": torch.zeros(2, 2)})
    heads_state = src.heads.state_dict()
    torch.save(vgg_state, tmp_path / "vgg16.pth")
    save_file(heads_state, str(tmp_path / "lpips.safetensors"))
    save_file({k: v.contiguous() for k, v in src.vgg.state_dict().items()},
              str(tmp_path / "vgg16.safetensors"))
    torch.save(heads_state, tmp_path / "lpips.pth")
    x, y = randn(1, 3, 32, 32, seed=19).tanh(), randn(1, 3, 32, 32, seed=20).tanh()
    with torch.no_grad():
        want = src(x, y)
        for vgg, heads in (("vgg16.pth", "lpips.safetensors"), ("vgg16.safetensors", "lpips.pth")):
            loaded = LPIPS.from_files(tmp_path / vgg, tmp_path / heads)
            assert torch.equal(loaded(x, y), want)

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        LPIPS.from_files(tmp_path / "nope.pth", tmp_path / "lpips.pth")
    renamed = {k.replace("model.1.", ""): v for k, v in heads_state.items()}
    torch.save(renamed, tmp_path / "bad_heads.pth")
    with pytest.raises(ValueError, match="missing key 'lin0.model.1.weight'"):
        LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "bad_heads.pth")
    torch.save(dict(vgg_state, **{"features.99.weight": torch.zeros(1)}), tmp_path / "bad_vgg.pth")
    with pytest.raises(ValueError, match="unexpected key 'features.99.weight'"):
        LPIPS.from_files(tmp_path / "bad_vgg.pth", tmp_path / "lpips.pth")


def test_discriminator_feature_loss_and_the_factory():
    torch.manual_seed(0)
    disc = PatchDiscriminator(3, 8, n_layers=2)
    loss = perceptual_loss("disc_features", discriminator=disc)
    assert isinstance(loss, DiscriminatorFeatureLoss) and list(loss.parameters()) == []
    x = randn(2, 3, 32, 32, seed=21)
    x_rec = (x + 0.3 * randn(2, 3, 32, 32, seed=22)).requires_grad_()
    assert loss(x, x).abs().max() < 1e-6
    d = loss(x, x_rec)
    d.sum().backward()
    assert d.shape == (2,) and (d > 0).all() and x_rec.grad.abs().sum() > 0
    assert torch.equal(perceptual_loss("none")(x, x_rec), torch.zeros(2))
    with pytest.raises(ValueError, match="vgg_path"):
        perceptual_loss("lpips")
    with pytest.raises(ValueError, match="'vgg'"):
        perceptual_loss("vgg")


# ----------------------------------------------------------------------------- the autoencoder

@pytest.mark.parametrize("kind", ["ae", "kl", "vq"])
def test_latent_api_shapes_and_scaling(kind):
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, kind=kind, codebook_size=32, codebook_dim=3, scaling_factor=0.5)
    model = Autoencoder(cfg).eval()
    x = smooth_images(2)
    with torch.no_grad():
        z0 = model.to_latent(x)
        assert z0.shape == (2, cfg.z_channels, 8, 8)
        enc = model.encode(x)
        z = {"ae": enc.h, "kl": enc.posterior.mean if enc.posterior else None,
             "vq": model.quantizer.quantize(enc.h) if kind == "vq" else None}[kind]
        torch.testing.assert_close(z0, 0.5 * z)
        torch.testing.assert_close(model.from_latent(z0), model.decode(z))
        out = model(x, sample_posterior=False)
        torch.testing.assert_close(out.reconstruction, model.decode(z))
        assert out.reconstruction.shape == x.shape
        assert (out.kl is not None) == (kind == "kl") and (out.vq is not None) == (kind == "vq")
        if kind == "vq":                                                   # decode snaps to codes
            torch.testing.assert_close(model.decode(z + 1e-4), model.decode(z))
        if kind == "kl":
            gen = torch.Generator().manual_seed(1)
            assert not torch.equal(model.to_latent(x, gen), z0)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_tiny_autoencoder_overfits_four_images(kind):
    """200 Adam steps on four 3x16x16 images with pixel variance ~0.26: predicting the mean
    image would leave MSE ~0.26 and a 4x4-pixel blur ~0.05; trained, KL reaches ~0.002 and VQ
    (64 codes, 256 positions) ~0.0007. The bound 0.01 (PSNR 26 dB on [-1, 1]) leaves a 5x margin."""
    torch.manual_seed(0)
    model = Autoencoder(dataclasses.replace(TINY, kind=kind, codebook_size=64))
    x = smooth_images(4)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(200):
        out = model(x)
        loss = F.mse_loss(out.reconstruction, x)
        loss = loss + (1e-6 * out.kl.mean() if kind == "kl" else out.vq.loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        mse = F.mse_loss(model.from_latent(model.to_latent(x)), x).item()
    assert mse < 0.01, f"{kind}: reconstruction MSE {mse:.4f} after 200 steps"


# ----------------------------------------------------------------------------- errors

def test_bad_input_is_refused_with_the_sizes():
    model = Autoencoder(TINY)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(2, 1, 16, 16\)"):
        model.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(15, 16\) is not divisible .* f = 2"):
        model.to_latent(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\), got \(1, 3, 8, 8\)"):
        model.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"got \(16, 16\)"):
        model.encode(torch.zeros(16, 16))


@pytest.mark.parametrize("change, message", [
    (dict(kind="gan"), "kind must be one of .* got 'gan'"),
    (dict(base_channels=0), "base_channels must be a positive int, got 0"),
    (dict(in_channels=2.5), "in_channels must be a positive int, got 2.5"),
    (dict(channel_mult=()), "channel_mult"),
    (dict(norm_groups=24), "channel count 128 is not divisible by norm_groups 24"),
    (dict(codebook_size=0), "codebook_size must be a positive int, got 0"),
    (dict(scaling_factor=0.0), "scaling_factor must be a finite number > 0, got 0.0"),
    (dict(beta=-1.0), "beta .* got -1.0"),
    (dict(ema_decay=1.0), r"ema_decay must lie in \[0, 1\), got 1.0"),
    (dict(dead_code_threshold=0.0), "dead_code_threshold must be > 0, got 0.0"),
])
def test_bad_config_values_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderConfig(**change)


def test_config_defaults_and_presets():
    cfg = AutoencoderConfig(in_channels=1, channel_mult=(1, 2, 4))
    assert cfg.out_channels == 1 and cfg.codebook_dim == 4 and cfg.downsampling_factor == 4
    assert AutoencoderConfig(channel_mult=[1]).channel_mult == (1,)            # f = 1, from JSON
    assert AutoencoderConfig(**AE_PRESETS["fmnist-vq-f4"].to_dict()) == AE_PRESETS["fmnist-vq-f4"]
    assert {AE_PRESETS[n].downsampling_factor for n in ("fmnist-f4", "fmnist-vq-f4")} == {4}
