"""Stable Diffusion checkpoints: tiny SD v1 / v2 models built with diffusers (random weights) are
read through each layout (diffusers folder; single file ldmkit writes; a foreign single file
with no ldmkit metadata) and must give diffusers' and transformers' numbers: the UNet, the VAE,
the text encoder within 1e-4 of the output scale, end-to-end latents within 1e-3. The full-size
version of these checks is `python -m benchmarks.sd_parity` (docs/sd.md)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks.sd_models import NEGATIVE, PROMPT, load_reference, save_reference, tiny_sd
from ldmkit import Pipeline
from ldmkit.io.stable_diffusion import save_diffusers_folder, save_single_file
from ldmkit.storage import CheckpointError

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module", params=["v1", "v2"])
def reference(request, tmp_path_factory):
    """(version, diffusers pipeline, its saved folder)."""
    folder = tmp_path_factory.mktemp(f"sd-{request.param}")
    return request.param, load_reference(save_reference(tiny_sd(request.param), folder, request.param)), folder


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_matches_reference(ours: Pipeline, ref, generation: bool = True):
    """The three networks on the same inputs, then whole generations."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 16, 64, generator=g)
    t = torch.tensor([11.0, 901.0])
    with torch.no_grad():
        expected = ref.unet(x, t, context).sample
        assert expected.std() > 0.05
        assert rel_err(ours.unet(x, t, context), expected) < 1e-4
        image = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
        assert rel_err(ours.vae.encode(image).posterior.mean, ref.vae.encode(image).latent_dist.mean) < 1e-4
        assert rel_err(ours.vae.decode(x[:1]), ref.vae.decode(x[:1]).sample) < 1e-4
        ids = ref.tokenizer(
            [PROMPT, ""], padding="max_length", max_length=16, truncation=True, return_tensors="pt"
        ).input_ids
        assert rel_err(ours.text_encoder([PROMPT, ""])[0], ref.text_encoder(ids)[0]) < 1e-4
    if not generation:
        return
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    z_T = torch.randn(1, 4, 8, 8, generator=g)
    samplers = (("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler), ("dpmpp_2m", DPMSolverMultistepScheduler),
                ("euler_a", EulerAncestralDiscreteScheduler))  # stochastic: the same generator on both sides
    for name, cls in samplers:
        ref.scheduler = cls.from_config(ref.scheduler.config)
        expected = ref(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=6, guidance_scale=4.0, latents=z_T,
                       output_type="latent", height=16, width=16, generator=torch.Generator().manual_seed(5)).images
        got = ours.generate(PROMPT, negative_prompt=NEGATIVE, steps=6, guidance=4.0, sampler=name, latents=z_T,
                            output="latent", height=16, width=16, seed=5)
        assert rel_err(got, expected) < 1e-3, name


def test_diffusers_folder_matches_diffusers(reference):
    version, ref, folder = reference
    ours = Pipeline.from_pretrained(folder)
    assert ours.config.prediction == ("v" if version == "v2" else "eps")
    assert ours.config.sampling.spacing is None and ours.config.sampling.offset == 1
    assert_matches_reference(ours, ref)


def test_single_file_round_trip_is_exact_and_matches(reference, tmp_path):
    version, ref, folder = reference
    ours = Pipeline.from_pretrained(folder)
    save_single_file(ours, tmp_path / "model.safetensors")
    back = Pipeline.from_pretrained(tmp_path / "model.safetensors")
    assert_same_model(back, ours)
    assert_matches_reference(back, ref, generation=False)


def test_diffusers_round_trip_is_exact_and_diffusers_reads_it(reference, tmp_path):
    from diffusers import StableDiffusionPipeline

    version, ref, folder = reference
    ours = Pipeline.from_pretrained(folder)
    save_diffusers_folder(ours, tmp_path / "export")
    assert_same_model(Pipeline.from_pretrained(tmp_path / "export"), ours)
    theirs = StableDiffusionPipeline.from_pretrained(tmp_path / "export", local_files_only=True)
    assert_matches_reference(ours, theirs, generation=False)


def assert_same_model(a: Pipeline, b: Pipeline):
    assert a.describe()["model"] == b.describe()["model"] and a.describe()["autoencoder"] == b.describe()["autoencoder"]
    for mine, theirs in ((a.unet, b.unet), (a.vae, b.vae), (a.text_encoder.model, b.text_encoder.model)):
        sa, sb = mine.state_dict(), theirs.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def foreign_single_file(ours: Pipeline, path):
    """What a real SD file looks like: SD-layout keys, no ldmkit metadata, no tokenizer."""
    save_single_file(ours, path)
    tensors = load_file(path)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def test_foreign_single_file_infers_the_model_and_matches(reference, tmp_path):
    version, ref, folder = reference
    path = foreign_single_file(Pipeline.from_pretrained(folder), tmp_path / "sd.safetensors")
    with pytest.raises(FileNotFoundError, match="no tokenizer.*tokenizer=FOLDER"):
        Pipeline.from_pretrained(path)
    ours = Pipeline.from_pretrained(path, tokenizer=folder / "tokenizer")
    assert ours.config.prediction == ("v" if version == "v2" else "eps")  # v2 without a yaml: v
    assert (ours.unet.config.head_dim, ours.unet.config.num_heads) == ((64, None) if version == "v2" else (None, 8))
    assert_matches_reference(ours, ref)
    if version == "v2":  # the OpenCLIP layout: q, k, v stacked, and a last layer SD never reads
        keys = load_file(path).keys()
        assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in keys
        (tmp_path / "sd.yaml").write_text('model:\n  params:\n    parameterization: "eps"\n')
        assert Pipeline.from_pretrained(path, tokenizer=folder / "tokenizer").config.prediction == "eps"
        assert Pipeline.from_pretrained(path, tokenizer=folder / "tokenizer", prediction="x0").config.prediction == "x0"


def test_ema_weights_and_half_precision(tmp_path):
    ref_folder = tmp_path / "ref"
    save_reference(tiny_sd("v1"), ref_folder, "v1")
    path = foreign_single_file(Pipeline.from_pretrained(ref_folder), tmp_path / "sd.safetensors")
    tensors = load_file(path)
    unet_keys = [k for k in tensors if k.startswith("model.diffusion_model.")]
    ema = {"model_ema." + k[len("model."):].replace(".", ""): tensors[k] * 0.5 for k in unet_keys}
    save_file({k: v.half() for k, v in (tensors | ema).items()}, path)
    tok = ref_folder / "tokenizer"
    raw = Pipeline.from_pretrained(path, tokenizer=tok)
    averaged = Pipeline.from_pretrained(path, tokenizer=tok, use_ema=True)
    half = Pipeline.from_pretrained(path, tokenizer=tok, dtype=torch.float16)
    name = "conv_in.weight"
    assert raw.dtype == torch.float32 and half.dtype == torch.float16
    assert torch.equal(averaged.unet.state_dict()[name], (0.5 * raw.unet.state_dict()[name]).half().float())
    assert torch.equal(half.unet.state_dict()[name], tensors["model.diffusion_model.input_blocks.0.0.weight"].half())
    with pytest.raises(CheckpointError, match="no EMA weights"):
        Pipeline.from_pretrained(foreign_single_file(raw, tmp_path / "no-ema.safetensors"), tokenizer=tok, use_ema=True)


def test_inpainting_variant_is_recognised(tmp_path):
    ref = load_reference(save_reference(tiny_sd("v1", in_channels=9), tmp_path / "inpaint", "v1"))
    path = foreign_single_file(Pipeline.from_pretrained(tmp_path / "inpaint"), tmp_path / "inpaint.safetensors")
    ours = Pipeline.from_pretrained(path, tokenizer=tmp_path / "inpaint" / "tokenizer")
    assert ours.unet.config.in_channels == 9
    x, t, context = torch.randn(1, 9, 8, 8), torch.tensor([5.0]), torch.randn(1, 16, 64)
    with torch.no_grad():
        assert rel_err(ours.unet(x, t, context), ref.unet(x, t, context).sample) < 1e-4
    with pytest.raises(ValueError, match="inpainting model"):
        ours.generate("a cat", steps=2)


def test_files_that_are_not_stable_diffusion_are_named(tmp_path):
    save_file({"lora_unet_down.weight": torch.zeros(2)}, tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointError, match="holds no Stable Diffusion UNet.*lora_unet_down.weight"):
        Pipeline.from_pretrained(tmp_path / "lora.safetensors")
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(CheckpointError, match="not a complete ldmkit checkpoint: model.safetensors is missing"):
        Pipeline.from_pretrained(tmp_path / "not-a-model")


def test_ldmkit_models_export_and_read_back_exactly(tmp_path):
    """A trained ldmkit model (MiniLM text, 1-channel first stage) through both formats."""
    ours = Pipeline.from_pretrained("shapes")
    for path in (save_single_file(ours, tmp_path / "shapes.safetensors"),
                 save_diffusers_folder(ours, tmp_path / "shapes")):
        back = Pipeline.from_pretrained(path)
        for mine, theirs in ((back.unet, ours.unet), (back.vae, ours.vae)):
            sa, sb = mine.state_dict(), theirs.state_dict()
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert back.describe()["model"] == ours.describe()["model"]
        assert back.defaults == ours.defaults
        z = back.generate("a red circle in the top left", steps=3, output="latent", seed=3)
        assert torch.equal(z, ours.generate("a red circle in the top left", steps=3, output="latent", seed=3))
    assert json.loads((tmp_path / "shapes" / "ldmkit.json").read_text())["name"] == ours.name


def test_convert_and_generate_on_the_command_line(reference, tmp_path, capsys):
    from PIL import Image

    from ldmkit.apps.cli import main

    version, ref, folder = reference
    single = tmp_path / "model.safetensors"
    assert main(["convert", str(folder), str(single), "--dtype", "fp16"]) == 0
    assert main(["convert", str(single), str(tmp_path / "back"), "--to", "diffusers"]) == 0
    back = Pipeline.from_pretrained(tmp_path / "back")
    assert back.dtype == torch.float32 and back.unet.state_dict()["conv_in.weight"].equal(
        ref.unet.state_dict()["conv_in.weight"].half().float())
    foreign = foreign_single_file(Pipeline.from_pretrained(folder), tmp_path / "foreign.safetensors")
    assert main(["generate", "a cat", "--model", str(foreign), "--num-images", "1", "--steps", "2",
                 "--height", "16", "--width", "24", "--out", str(tmp_path / "out")]) == 2
    assert "no tokenizer" in capsys.readouterr().err
    assert main(["generate", "a cat", "--model", str(foreign), "--tokenizer", str(folder / "tokenizer"),
                 "--num-images", "1", "--steps", "2", "--height", "16", "--width", "24",
                 "--out", str(tmp_path / "out")]) == 0
    png = Image.open(tmp_path / "out" / "00000_seed0.png")
    assert png.size == (24, 16) and png.text["size"] == "24x16" and png.text["prompt"] == "a cat"


class _TouchOnUnpickle:
    """Unpickling this would create a marker file: the stand-in for code hidden in a checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_legacy_ckpt_loads_and_a_booby_trapped_one_runs_nothing(tmp_path):
    ref_folder = tmp_path / "ref"
    ref = load_reference(save_reference(tiny_sd("v1"), ref_folder, "v1"))
    tensors = load_file(foreign_single_file(Pipeline.from_pretrained(ref_folder), tmp_path / "sd.safetensors"))
    torch.save({"state_dict": tensors, "global_step": 470000, "epoch": 6}, tmp_path / "sd.ckpt")
    ours = Pipeline.from_pretrained(tmp_path / "sd.ckpt", tokenizer=ref_folder / "tokenizer")
    assert_matches_reference(ours, ref, generation=False)

    marker = tmp_path / "pwned"
    torch.save({"state_dict": tensors, "hook": _TouchOnUnpickle(marker)}, tmp_path / "trap.ckpt")
    with pytest.raises(CheckpointError, match="refused.*Nothing in it was run"):
        Pipeline.from_pretrained(tmp_path / "trap.ckpt", tokenizer=ref_folder / "tokenizer")
    assert not marker.exists()
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "sd.safetensors").read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        Pipeline.from_pretrained(tmp_path / "cut.safetensors")


def test_x4_upscaler_matches_diffusers(tmp_path):
    """SD x4 upscaler's structure: the noised low-res image joined to z_t, the noise level as
    the class label, an f = 4 decoder; the same latents and image as StableDiffusionUpscalePipeline."""
    from diffusers import EulerDiscreteScheduler
    from PIL import Image

    from benchmarks.sd_models import tiny_upscaler

    ref = tiny_upscaler(tmp_path / "x4")
    from_folder = Pipeline.from_pretrained(tmp_path / "x4")
    from_file = Pipeline.from_pretrained(foreign_single_file(from_folder, tmp_path / "x4.safetensors"),
                                         tokenizer=tmp_path / "x4" / "tokenizer")
    for ours in (from_folder, from_file):
        assert ours.config.lowres == from_folder.config.lowres and ours.config.schedule == from_folder.config.schedule
        assert ours.config.lowres.channels == 3 and ours.config.lowres.max_noise_level == 350
        assert ours.config.prediction == "v" and ours.vae.config.downsampling_factor == 4
        assert ours.vae.config.scaling_factor == 0.08333
    low = Image.fromarray(torch.randint(0, 255, (8, 8, 3), generator=torch.Generator().manual_seed(0)).byte().numpy())
    z_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    runs = (("ddim", None, from_folder), ("euler", EulerDiscreteScheduler, from_folder), ("euler", None, from_file))
    for name, scheduler, ours in runs:
        if scheduler is not None:
            ref.scheduler = scheduler.from_config(ref.scheduler.config)
        kwargs = dict(num_inference_steps=5, guidance_scale=5.0, noise_level=40, latents=z_T,
                      generator=torch.Generator().manual_seed(3))
        expected = ref(PROMPT, image=low, negative_prompt=NEGATIVE, output_type="pt", **kwargs).images * 2 - 1
        got = ours.upscale(low, PROMPT, negative_prompt=NEGATIVE, noise_level=40, steps=5, guidance=5.0,
                           sampler=name, latents=z_T, seed=3, output="tensor")
        assert got.shape == (1, 3, 32, 32)
        assert rel_err(got, expected) < 1e-3, name
    with pytest.raises(ValueError, match=r"noise_level must be a whole number in \[0, 350\]"):
        from_folder.upscale(low, PROMPT, noise_level=351)
    with pytest.raises(ValueError, match="is not an upscaler"):
        Pipeline.from_pretrained("shapes").upscale(low)
    from ldmkit.apps.cli import main
    from ldmkit.utils.images import read_png_metadata

    low.save(tmp_path / "low.png")
    assert main(["upscale", str(tmp_path / "low.png"), PROMPT, "--model", str(tmp_path / "x4"), "--steps", "2",
                 "--num-images", "1", "--noise-level", "30", "--out", str(tmp_path / "out")]) == 0
    meta = read_png_metadata(tmp_path / "out" / "00000_seed0.png")
    assert meta["task"] == "upscale" and meta["noise_level"] == "30" and meta["size"] == "32x32"
