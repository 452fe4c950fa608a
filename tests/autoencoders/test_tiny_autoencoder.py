"""Tiny autoencoder (TAESD): a random diffusers AutoencoderTiny saved with save_pretrained loads
and encodes / decodes / reconstructs as diffusers does; the original repository's layout, built
here as taesd.py builds it (nn.Sequential, Clamp first in the decoder), loads to the same function
from .safetensors and .pth; ldmkit folders round-trip; folders of anything else are refused, saying
what was found and what was expected."""

import inspect
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ldmkit.autoencoders.tiny import TinyAutoencoder, TinyAutoencoderConfig
from ldmkit.io.taesd_files import load_tiny_autoencoder, save_tiny_autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
             num_encoder_blocks=(1, 2, 1, 1), num_decoder_blocks=(1, 2, 1, 1))


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---- TAESD's original modules, as madebyollin/taesd's taesd.py builds them ------------------------
# The stage sizes are parameters so that a small model can be built too; with the defaults these
# are taesd.py's Encoder() and Decoder() entry for entry (checked against its literal lists below).
def conv(n_in, n_out, **kwargs):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def original_encoder(latent_channels=4, width=64, blocks=(1, 3, 3, 3)):
    layers = [conv(3, width), *[Block(width, width) for _ in range(blocks[0])]]
    for n in blocks[1:]:
        layers += [conv(width, width, stride=2, bias=False), *[Block(width, width) for _ in range(n)]]
    return nn.Sequential(*layers, conv(width, latent_channels))


def original_decoder(latent_channels=4, width=64, blocks=(3, 3, 3, 1)):
    layers = [Clamp(), conv(latent_channels, width), nn.ReLU()]
    for n in blocks[:-1]:
        layers += [Block(width, width) for _ in range(n)]
        layers += [nn.Upsample(scale_factor=2), conv(width, width, bias=False)]
    return nn.Sequential(*layers, *[Block(width, width) for _ in range(blocks[-1])], conv(width, 3))


def test_original_mirror_is_taesd_py():
    """Where taesd.py's Encoder() / Decoder() put their convs and Blocks, read off its source."""
    def kinds(seq):
        return {kind: [i for i, m in enumerate(seq) if type(m) is cls] for kind, cls in
                (("conv", nn.Conv2d), ("block", Block), ("clamp", Clamp), ("upsample", nn.Upsample))}

    with torch.device("meta"):
        encoder, decoder = original_encoder(), original_decoder()
    assert kinds(encoder) == {"conv": [0, 2, 6, 10, 14], "block": [1, 3, 4, 5, 7, 8, 9, 11, 12, 13],
                              "clamp": [], "upsample": []}
    assert kinds(decoder) == {"conv": [1, 7, 12, 17, 19], "block": [3, 4, 5, 8, 9, 10, 13, 14, 15, 18],
                              "clamp": [0], "upsample": [6, 11, 16]}


def save_original(folder, encoder, decoder, fmt):
    folder.mkdir(parents=True, exist_ok=True)
    for name, seq in (("taesd_encoder", encoder), ("taesd_decoder", decoder)):
        state = {k: v.contiguous() for k, v in seq.state_dict().items()}
        if fmt == "safetensors":
            save_file(state, folder / f"{name}.safetensors")
        else:
            torch.save(state, folder / f"{name}.pth")


@pytest.mark.parametrize("latent_channels, fmt", [(4, "safetensors"), (16, "pth")])  # 16: taesd3 / taef1's width
def test_original_layout_loads_to_the_same_function(tmp_path, latent_channels, fmt):
    torch.manual_seed(0)
    encoder, decoder = original_encoder(latent_channels).eval(), original_decoder(latent_channels).eval()
    save_original(tmp_path, encoder, decoder, fmt)
    model = load_tiny_autoencoder(tmp_path)
    assert model.config == TinyAutoencoderConfig(latent_channels=latent_channels)
    # Either file of the pair names it too.
    assert load_tiny_autoencoder(tmp_path / f"taesd_decoder.{fmt}").config == model.config

    x = images()
    with torch.no_grad():
        z = model.encode(x)
        assert max_err(z, encoder((x + 1) / 2)) < 1e-5          # the original works in [0, 1]
        z = z + 0.5 * torch.randn_like(z)                        # latents off the encoder's, as a sampler's are
        assert max_err(model.decode(z), decoder(z) * 2 - 1) < 1e-5
    assert z.shape == (2, latent_channels, 4, 4)


def test_original_layout_small_config_is_read_off_the_weights(tmp_path):
    torch.manual_seed(1)
    encoder = original_encoder(4, width=16, blocks=(1, 2, 0, 1)).eval()
    decoder = original_decoder(4, width=16, blocks=(2, 0, 1, 1)).eval()
    save_original(tmp_path, encoder, decoder, "safetensors")
    model = load_tiny_autoencoder(tmp_path / "taesd_encoder.safetensors")
    assert model.config == TinyAutoencoderConfig(
        encoder_block_out_channels=(16,) * 4, decoder_block_out_channels=(16,) * 4,
        num_encoder_blocks=(1, 2, 0, 1), num_decoder_blocks=(2, 0, 1, 1))
    x = images(1)
    with torch.no_grad():
        assert max_err(model.decode(model.encode(x)), decoder(encoder((x + 1) / 2)) * 2 - 1) < 1e-5


# ---- diffusers ------------------------------------------------------------------------------------
def test_config_defaults_are_diffusers():
    diffusers = pytest.importorskip("diffusers")
    signature = inspect.signature(diffusers.AutoencoderTiny.__init__).parameters
    ours = TinyAutoencoderConfig()
    for field in ours.__dataclass_fields__:
        assert getattr(ours, field) == signature[field].default, field


@pytest.fixture
def diffusers_taesd(tmp_path):
    """A random small AutoencoderTiny and the folder save_pretrained wrote it to."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    reference = diffusers.AutoencoderTiny(**SMALL, latent_channels=4, scaling_factor=0.5, shift_factor=0.1).eval()
    reference.save_pretrained(tmp_path / "taesd-diffusers")
    return reference, tmp_path / "taesd-diffusers"


def test_diffusers_folder_matches_diffusers(diffusers_taesd):
    reference, folder = diffusers_taesd
    model = load_tiny_autoencoder(folder)
    assert model.config == TinyAutoencoderConfig(**SMALL, scaling_factor=0.5, shift_factor=0.1)
    x = images()
    with torch.no_grad():
        z = model.encode(x)
        assert max_err(z, reference.encode(x).latents) < 1e-5
        z = z + 0.5 * torch.randn_like(z)
        assert max_err(model.decode(z), reference.decode(z).sample) < 1e-5
        assert max_err(model(x), reference(x).sample) < 1e-5    # through 8-bit latents
        assert max_err(model.scale_latents(z), reference.scale_latents(z)) < 1e-6
        assert max_err(model.unscale_latents(z), reference.unscale_latents(z)) < 1e-6
        # to_latent / from_latent as diffusers' pipelines scale: (z - shift) * s and back
        z0 = model.to_latent(x)
        assert max_err(z0, (reference.encode(x).latents - 0.1) * 0.5) < 1e-5
        assert max_err(model.from_latent(z0), reference.decode(z0 / 0.5 + 0.1).sample) < 1e-5


def test_save_and_load_round_trip(diffusers_taesd, tmp_path):
    _, folder = diffusers_taesd
    model = load_tiny_autoencoder(folder)
    saved = save_tiny_autoencoder(model, tmp_path / "ours")
    assert json.loads((saved / "config.json").read_text())["kind"] == "tiny-autoencoder"
    again = load_tiny_autoencoder(saved)
    assert again.config == model.config
    assert again.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_shapes_that_do_not_fit_are_refused(diffusers_taesd):
    _, folder = diffusers_taesd
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    with pytest.raises(ValueError, match=r"shape\(s\) differ.*\(16, 8, 3, 3\) expected"):
        load_tiny_autoencoder(folder)


# ---- errors ---------------------------------------------------------------------------------------
def test_folders_of_something_else_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tiny autoencoder at"):
        load_tiny_autoencoder(tmp_path / "absent")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match=r"found notes\.txt\); expected an ldmkit folder"):
        load_tiny_autoencoder(empty)

    other = tmp_path / "kl-vae"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="'AutoencoderKL', not a tiny autoencoder"):
        load_tiny_autoencoder(other)

    half = tmp_path / "half"
    half.mkdir()
    save_file({"0.weight": torch.zeros(64, 3, 3, 3)}, half / "taesd_encoder.safetensors")
    with pytest.raises(FileNotFoundError, match="taesd_decoder"):
        load_tiny_autoencoder(half / "taesd_encoder.safetensors")


def test_weights_of_another_network_are_refused(tmp_path):
    with torch.device("meta"):
        names = TinyAutoencoder(TinyAutoencoderConfig(**SMALL)).state_dict()
    state = {k: torch.zeros(v.shape) for k, v in names.items() if k.startswith("encoder.")}
    save_file(state, tmp_path / "x_encoder.safetensors")
    save_file(state, tmp_path / "x_decoder.safetensors")
    with pytest.raises(ValueError, match=r"key 'encoder\.layers\.0\.\w+' is not an nn.Sequential entry"):
        load_tiny_autoencoder(tmp_path)


def test_other_taesd_variants_are_refused(tmp_path):
    """TAEF2's Blocks carry a pooling branch ("pool.*"); TAESana's encoder has bare ReLUs between convs."""
    torch.manual_seed(0)
    encoder, decoder = original_encoder(4, width=16), original_decoder(4, width=16)
    pooled = {**encoder.state_dict(), "11.pool.0.weight": torch.zeros(64, 16, 1, 1)}
    save_file(pooled, tmp_path / "taef2_encoder.safetensors")
    save_file(decoder.state_dict(), tmp_path / "taef2_decoder.safetensors")
    with pytest.raises(ValueError, match="entry 11 holds .*pool.*a TAESD variant this loader does not read"):
        load_tiny_autoencoder(tmp_path / "taef2_encoder.safetensors")

    f32 = nn.Sequential(conv(3, 8, stride=2), nn.ReLU(), conv(8, 16, stride=2), nn.ReLU(), Block(16, 16), conv(16, 4))
    save_file(f32.state_dict(), tmp_path / "taesana_encoder.safetensors")
    save_file(decoder.state_dict(), tmp_path / "taesana_decoder.safetensors")
    with pytest.raises(ValueError, match=r"indices \[0, 2, 4, 5\], not 0, 1, 2, \.\.\.: not the TAESD Encoder"):
        load_tiny_autoencoder(tmp_path / "taesana_encoder.safetensors")
