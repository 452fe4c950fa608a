"""DiT: each block the identity at initialisation, patchify / unpatchify a round trip, the same
numbers as diffusers' DiTTransformer2DModel (its frequency shift and MLP-norm eps set as
options), clear errors for what cannot run, and a tiny DiT that overfits a few latents."""

import dataclasses

import pytest
import torch

from ldmkit.io.dit_keys import dit_from_diffusers, dit_to_diffusers
from ldmkit.nets.dit import DiT
from ldmkit.nets.dit_config import DIT_PRESETS, DiTConfig

TINY = DIT_PRESETS["tiny"]


def test_blocks_and_output_are_zero_at_initialisation():
    net = DiT(TINY).eval()
    x = torch.randn(2, 4, 8, 8)
    tokens = net.patchify(x)
    c = net.t_embedder(torch.tensor([3.0, 700.0])) + net.y_embedder(torch.tensor([1, 10]))
    for block in net.blocks:
        assert torch.equal(block(tokens, c), tokens)  # adaLN-Zero: the identity
    assert torch.equal(net(x, torch.tensor([3.0, 700.0]), class_labels=torch.tensor([1, 10])), torch.zeros(2, 4, 8, 8))


@pytest.mark.parametrize("patch", [1, 2, 4, 8])
def test_patchify_unpatchify_round_trip(patch):
    c = dataclasses.replace(TINY, patch_size=patch, input_size=8)
    net = DiT(c)
    x = torch.randn(2, c.output_channels * patch * patch, 8 // patch, 8 // patch).flatten(2).transpose(1, 2)
    image = net.unpatchify(x, 8, 8)  # tokens -> image -> tokens, by the reference's index order
    back = image.reshape(2, c.output_channels, 8 // patch, patch, 8 // patch, patch).permute(0, 2, 4, 3, 5, 1)
    assert torch.equal(back.reshape(x.shape), x)


def test_same_numbers_as_diffusers():
    diffusers = pytest.importorskip("diffusers")
    c = DiTConfig(hidden_size=64, depth=2, num_heads=4, input_size=8, patch_size=2, num_classes=10, learn_sigma=True,
                  time_freq_shift=1, mlp_norm_eps=1e-5)  # diffusers' numerics
    ref = diffusers.DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8,
                                          num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.1)
        for block in ref.transformer_blocks[1:]:  # diffusers' copies of the embedders are copies
            block.norm1.emb.load_state_dict(ref.transformer_blocks[0].norm1.emb.state_dict())
    ours = DiT(c).eval()
    ours.load_state_dict(dit_from_diffusers(ref.state_dict(), c.depth, ours.pos_embed))
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 901]), torch.tensor([3, 10])
    with torch.no_grad():
        expected = ref(x, timestep=t, class_labels=y).sample
        got = ours(x, t, class_labels=y)
    assert expected.std() > 0.1 and (got - expected).abs().max() < 1e-4 * expected.abs().max()
    back = dit_to_diffusers(ours.state_dict(), c.depth)
    assert set(back) == set(ref.state_dict()) - {k for k in ref.state_dict() if "pos_embed.pos_embed" in k}
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in back.items())


def test_bad_input_names_the_value():
    net = DiT(TINY)
    with pytest.raises(ValueError, match="patch size 2 does not divide the 7x8"):
        net(torch.randn(1, 4, 7, 8), 10, class_labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="class label 11 is out of range 0..10"):
        net(torch.randn(1, 4, 8, 8), 10, class_labels=torch.tensor([11]))
    with pytest.raises(ValueError, match="patch_size must be 1, 2, 4 or 8, got 3"):
        DiTConfig(patch_size=3)


def test_tiny_dit_overfits_a_few_latents():
    torch.manual_seed(0)
    net = DiT(dataclasses.replace(TINY, class_dropout=0.0))
    x0 = torch.randn(4, 4, 8, 8)
    labels = torch.arange(4)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    t = torch.full((4,), 500)
    noise = torch.randn_like(x0)
    x_t = 0.5**0.5 * x0 + 0.5**0.5 * noise
    losses = []
    for _ in range(150):
        loss = (net(x_t, t, class_labels=labels) - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_a_dit_model_saves_loads_and_generates_through_the_pipeline(tmp_path):
    from ldmkit import Pipeline
    from ldmkit.autoencoders import Autoencoder
    from ldmkit.model import LatentDiffusionConfig, ModelParts

    first_stage = Pipeline.from_pretrained("fashion-mnist-f4").autoencoder
    config = LatentDiffusionConfig(net=TINY, conditioning="class", text_encoder="minilm")
    names = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    net = DiT(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)  # not the all-zero output of initialisation
    pipe = Pipeline(ModelParts(net, first_stage, config, None, names, name="dit-tiny"))
    folder = pipe.save_pretrained(tmp_path / "dit")
    again = Pipeline.from_pretrained(folder)
    assert isinstance(again.net, DiT) and again.net.config == TINY
    a = pipe.generate("bag", steps=3, seed=1, output="latent")
    b = again.generate("a photo of a bag", steps=3, seed=1, output="latent")
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, again.generate("trouser", steps=3, seed=1, output="latent"))
    assert isinstance(first_stage, Autoencoder)


def test_reference_checkpoints_load_safely_with_their_config_read_off_the_weights(tmp_path):
    from ldmkit.io.dit_checkpoints import load_dit_checkpoint
    from ldmkit.storage import CheckpointError

    config = DiTConfig(hidden_size=384, depth=2, num_heads=6, input_size=8, patch_size=4, num_classes=10,
                       learn_sigma=True)
    net = DiT(config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    torch.save(net.state_dict(), tmp_path / "DiT-tiny.pt")  # as the reference saves its models
    loaded = load_dit_checkpoint(tmp_path / "DiT-tiny.pt")
    assert loaded.config == config
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.tensor([2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, class_labels=y), net(x, t, class_labels=y))
    wrong = r"pos_embed has shape \(1, 4, 384\), the config.s DiT \(1, 16, 64\) \(hidden_size 64"
    with pytest.raises(CheckpointError, match=wrong):
        load_dit_checkpoint(tmp_path / "DiT-tiny.pt", config=dataclasses.replace(TINY, hidden_size=64))
