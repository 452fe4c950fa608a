"""diffusers DiTPipeline folders, both ways: a tiny random DiTPipeline (3 classes, learned sigma,
DPM-Solver scheduler) loads into ldmkit with diffusers' transformer outputs and images, its class
names and synonyms as prompts; an ldmkit DiT exports to a folder diffusers loads with ldmkit's
outputs; folders and models that cannot be read or written exactly are named."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

diffusers = pytest.importorskip("diffusers")

from benchmarks.sd_models import TINY_VAE, perturb_  # noqa: E402
from ldmkit import Pipeline  # noqa: E402
from ldmkit.autoencoders import Autoencoder, AutoencoderConfig  # noqa: E402
from ldmkit.io.dit_folders import save_dit_folder  # noqa: E402
from ldmkit.io.stable_diffusion import save_diffusers_folder  # noqa: E402
from ldmkit.model import LatentDiffusionConfig, ModelParts  # noqa: E402
from ldmkit.model.conditioner import ClassConditioner  # noqa: E402
from ldmkit.nets.dit import DiT  # noqa: E402
from ldmkit.nets.dit_config import DiTConfig  # noqa: E402
from ldmkit.storage import CheckpointError  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]

ID2LABEL = {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus", "2": "crane"}
# diffusers' numerics (timestep frequency shift 1, MLP-norm eps 1e-5)
TINY_DIT = DiTConfig(hidden_size=64, depth=2, num_heads=4, input_size=8, patch_size=2, num_classes=3, learn_sigma=True,
                     time_freq_shift=1, mlp_norm_eps=1e-5)


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def inputs():
    """x, t, labels (the last the null class)."""
    return torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([5, 480, 901]), \
        torch.tensor([0, 2, 3])


def their_output(transformer, x, t, y):
    with torch.no_grad():
        return transformer(x, timestep=t, class_labels=y).sample


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4,
                                                  out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                                  num_embeds_ada_norm=3).eval()
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0, 0.1)  # not adaLN-Zero's all-zero output
        for block in transformer.transformer_blocks[1:]:  # copies of one embedder, as converted DiTs have
            block.norm1.emb.load_state_dict(transformer.transformer_blocks[0].norm1.emb.state_dict())
    vae = diffusers.AutoencoderKL(**TINY_VAE)
    perturb_(vae)
    pipe = diffusers.DiTPipeline(transformer, vae, diffusers.DPMSolverMultistepScheduler(), id2label=ID2LABEL)
    folder = tmp_path_factory.mktemp("dit")
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())  # save_pretrained drops id2label;
    (folder / "model_index.json").write_text(json.dumps(index | {"id2label": ID2LABEL}))  # released folders have it
    ref = diffusers.DiTPipeline.from_pretrained(folder, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    return ref, folder


def test_dit_folder_loads_with_diffusers_outputs(dit_folder):
    ref, folder = dit_folder
    pipe = Pipeline.from_pretrained(folder)
    c = pipe.net.config
    assert isinstance(pipe.net, DiT) and (c.hidden_size, c.num_heads, c.depth, c.num_classes) == (64, 4, 2, 3)
    assert c.learn_sigma and (c.time_freq_shift, c.mlp_norm_eps) == (1, 1e-5) and pipe.config.image_size == 16
    assert (pipe.defaults.sampler, pipe.defaults.guidance) == ("dpmpp_2m", 4.0)
    assert pipe.class_names == list(ID2LABEL.values())
    x, t, y = inputs()
    expected = their_output(ref.transformer, x, t, y)
    with torch.no_grad():
        got = pipe.net(x, t, class_labels=y)
    assert expected.std() > 0.1 and (got - expected).abs().max() < 1e-4 * expected.abs().max()
    # the whole pipeline, unguided (DiTPipeline guides with null label 1000, which a 3-class model lacks)
    images = ref(class_labels=[1], guidance_scale=1.0, num_inference_steps=3, generator=torch.manual_seed(7),
                 output_type="pt").images
    ours = pipe.generate("goldfish", guidance=1.0, steps=3, seed=7, output="tensor")
    assert rel_err((ours + 1) / 2, images) < 1e-3
    guided = pipe.generate("goldfish", steps=3, seed=7, output="tensor")  # guidance 4: runs, and differs
    assert rel_err(guided, ours) > 1e-3


def test_class_names_and_their_synonyms_are_prompts(dit_folder):
    ref, folder = dit_folder
    pipe = Pipeline.from_pretrained(folder)
    prompts = ["tench", "Tinca tinca", "tench, Tinca tinca", "a photo of a goldfish", "Carassius auratus", "crane"]
    assert pipe.encode_prompts(prompts)["class_labels"].tolist() == ref.get_label_ids(prompts[:2]) + [0, 1, 1, 2]
    assert pipe.encode_prompts([""])["class_labels"].tolist() == [3]  # the null class
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    by_synonym = pipe.generate("Tinca tinca", steps=2, latents=latents, output="latent")
    torch.testing.assert_close(by_synonym, pipe.generate("tench", steps=2, latents=latents, output="latent"))
    assert not torch.allclose(by_synonym, pipe.generate("crane", steps=2, latents=latents, output="latent"))
    with pytest.raises(ValueError, match=r"knows only the prompts \['tench, Tinca tinca', 'goldfish.*got 'cat'"):
        pipe.generate("cat", steps=2)


def test_generate_takes_class_labels(dit_folder):
    _, folder = dit_folder
    pipe = Pipeline.from_pretrained(folder)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    by_label = pipe.generate(class_labels=[2, torch.tensor(0)], steps=2, latents=latents, output="latent")
    by_name = pipe.generate(["crane", "tench"], steps=2, latents=latents, output="latent")
    torch.testing.assert_close(by_label, by_name)
    with pytest.raises(ValueError, match=r"whole numbers in 0..2 \(.* has 3 classes: .*crane.*\), got \[3\]"):
        pipe.generate(class_labels=[1, 3], steps=2)
    with pytest.raises(ValueError, match="class_labels or a prompt, not both"):
        pipe.generate("crane", class_labels=[1], steps=2)


def test_shared_synonyms_and_long_class_lists():
    imagenet_like = ClassConditioner(["crane", "tench, Tinca tinca", "crane, derrick"], 4)
    assert imagenet_like.label("crane") == 2  # the last class of that name, as DiTPipeline.get_label_ids gives
    many = ClassConditioner([f"class {k}" for k in range(1000)], 1001)
    with pytest.raises(ValueError, match=r"\['class 0', .*'class 11'\] and 988 more \(or ''\), got 'cat'"):
        many.label("cat")


def ldmkit_dit(net_config: DiTConfig) -> ModelParts:
    torch.manual_seed(3)
    net = DiT(net_config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    autoencoder = Autoencoder(AutoencoderConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                                scaling_factor=0.5))
    config = LatentDiffusionConfig(net=net_config, conditioning="class", image_size=16)
    return ModelParts(net, autoencoder, config, None, ["cat, tabby", "dog", "cow"], name="dit-tiny")


def test_an_ldmkit_dit_exports_to_a_folder_diffusers_loads(tmp_path):
    parts = ldmkit_dit(TINY_DIT)
    folder = save_diffusers_folder(parts, tmp_path / "export")  # a DiT goes to save_dit_folder
    ref = diffusers.DiTPipeline.from_pretrained(folder, local_files_only=True)
    assert ref.labels == {"cat": 0, "tabby": 0, "dog": 1, "cow": 2}
    x, t, y = inputs()
    expected = their_output(ref.transformer, x, t, y)
    with torch.no_grad():
        got = parts.net(x, t, class_labels=y)
    assert got.std() > 0.1 and (got - expected).abs().max() < 1e-4 * got.abs().max()
    with torch.no_grad():
        image = torch.randn(1, 3, 16, 16)
        torch.testing.assert_close(ref.vae.decode(ref.vae.encode(image).latent_dist.mean).sample,
                                   parts.autoencoder.decode(parts.autoencoder.encode(image).posterior.mode()),
                                   atol=1e-4, rtol=1e-4)
    again = Pipeline.from_pretrained(folder)  # and ldmkit reads its own export back exactly
    assert again.config == parts.config and again.class_names == parts.class_names and again.name == "dit-tiny"
    assert all(torch.equal(v, again.net.state_dict()[k]) for k, v in parts.net.state_dict().items())


def test_reference_numerics_export_only_when_asked(tmp_path):
    reference = DiTConfig(**{**TINY_DIT.to_dict(), "time_freq_shift": 0, "mlp_norm_eps": 1e-6})
    parts = ldmkit_dit(reference)
    with pytest.raises(ValueError, match="frequency shift 0.*allow_numerics_change=True"):
        save_dit_folder(parts, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    folder = save_dit_folder(parts, tmp_path / "export", allow_numerics_change=True)
    ref = diffusers.DiTPipeline.from_pretrained(folder, local_files_only=True)
    assert ref.transformer.config.norm_eps == 1e-6  # the MLP-norm eps carries over; only the shift changes
    x, t, y = inputs()
    expected = their_output(ref.transformer, x, t, y)
    with torch.no_grad():
        before = parts.net(x, t, class_labels=y)
    assert 1e-4 < rel_err(before, expected) < 0.1  # a small change, not none
    again = Pipeline.from_pretrained(folder)  # read back, it is the model diffusers runs
    assert again.net.config.time_freq_shift == 1
    with torch.no_grad():
        assert rel_err(again.net(x, t, class_labels=y), expected) < 1e-4


def copy_folder(folder, target):
    shutil.copytree(folder, target)
    return target


def test_folders_that_cannot_be_read_exactly_are_named(dit_folder, tmp_path):
    _, folder = dit_folder
    weights = "transformer/diffusion_pytorch_model.safetensors"
    missing = copy_folder(folder, tmp_path / "missing")
    (missing / weights).unlink()
    with pytest.raises(CheckpointError, match="no transformer weights in .*transformer"):
        Pipeline.from_pretrained(missing)

    pickled = copy_folder(folder, tmp_path / "bin")  # a .bin is read as the SD loader reads one: weights only
    torch.save(load_file(pickled / weights), pickled / "transformer/diffusion_pytorch_model.bin")
    (pickled / weights).unlink()
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(Pipeline.from_pretrained(pickled).net(x, t, class_labels=y),
                                   Pipeline.from_pretrained(folder).net(x, t, class_labels=y))

    diverged = copy_folder(folder, tmp_path / "diverged")
    state = load_file(diverged / weights)
    state["transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"] += 0.01
    save_file(state, diverged / weights)
    with pytest.raises(CheckpointError, match="block 1's timestep/label embedder differs"):
        Pipeline.from_pretrained(diverged)

    short = copy_folder(folder, tmp_path / "short")
    state = {k: v for k, v in load_file(short / weights).items() if not k.startswith("transformer_blocks.1.ff")}
    save_file(state, short / weights)
    with pytest.raises(CheckpointError, match="lack transformer_blocks.1.ff"):
        Pipeline.from_pretrained(short)
    with pytest.raises(ValueError, match="do not apply to a DiT folder"):
        Pipeline.from_pretrained(folder, tokenizer="somewhere")
