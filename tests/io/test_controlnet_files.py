"""ControlNet files: a tiny SD v1 / v2 (diffusers, random) and a ControlNet diffusers builds from its
UNet (ControlNetModel.from_unet, every weight perturbed) must give StableDiffusionControlNetPipeline's
latents within 1e-3 for the same start latents, prompt, hint, scale and steps, loaded from each
layout (diffusers folder, original file with and without "control_model.", .pth or .safetensors,
ldmkit folder); exports read back by diffusers; a ControlNet for another base is refused."""

import pytest
import torch
from PIL import Image

from benchmarks.sd_models import NEGATIVE, PROMPT, load_reference, save_reference, tiny_sd
from ldmkit import Pipeline
from ldmkit.io.controlnet_files import (
    from_original,
    load_controlnet,
    save_controlnet,
    save_controlnet_diffusers,
    save_controlnet_original,
    to_original,
)
from ldmkit.nets import UNET_PRESETS, UNet
from ldmkit.nets.controlnet import ControlNet
from ldmkit.storage import CheckpointError

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]

HINT_WIDTHS = (16, 32)  # one stride-2 step: the tiny VAE's factor 2 (SD's (16, 32, 96, 256): 8)


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def diffusers_controlnet(unet, seed: int):
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_WIDTHS)
    with torch.no_grad():  # zero convolutions and the hint encoder's last conv too: every weight matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def hint_image(seed: int, size: int = 16) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy())


@pytest.fixture(scope="module", params=["v1", "v2"])
def setup(request, tmp_path_factory):
    """(version, diffusers SD pipeline, our Pipeline of it, two diffusers ControlNets, folder)."""
    version = request.param
    folder = tmp_path_factory.mktemp(f"controlnet-{version}")
    ref = load_reference(save_reference(tiny_sd(version), folder / "sd", version))
    nets = [diffusers_controlnet(ref.unet, seed) for seed in (1, 2)]
    for k, net in enumerate(nets):
        net.save_pretrained(folder / f"cn{k}")
    return version, ref, Pipeline.from_pretrained(folder / "sd"), nets, folder


def reference_pipeline(ref, controlnet):
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(
        vae=ref.vae, text_encoder=ref.text_encoder, tokenizer=ref.tokenizer, unet=ref.unet, controlnet=controlnet,
        scheduler=ref.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def compare(ours: Pipeline, theirs, images, sampler: str = "ddim", **control):
    """Our latents against the reference's, the same start latents, prompt, hints, scale, steps."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    z_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    scheduler = {"ddim": DDIMScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}[sampler]
    theirs.scheduler = scheduler.from_config(theirs.scheduler.config)
    names = {"control_scale": "controlnet_conditioning_scale", "control_guess_mode": "guess_mode",
             "control_start": "control_guidance_start", "control_end": "control_guidance_end"}
    expected = theirs(PROMPT, image=images, negative_prompt=NEGATIVE, num_inference_steps=6, guidance_scale=4.0,
                      latents=z_T, output_type="latent", height=16, width=16,
                      **{names[k]: v for k, v in control.items()}).images
    got = ours.generate(PROMPT, negative_prompt=NEGATIVE, steps=6, guidance=4.0, sampler=sampler, latents=z_T,
                        output="latent", height=16, width=16, control_image=images, **control)
    plain = ours.generate(PROMPT, negative_prompt=NEGATIVE, steps=6, guidance=4.0, sampler=sampler, latents=z_T,
                          output="latent", height=16, width=16)
    assert rel_err(plain, expected) > 1e-2, "the control should matter here"
    return rel_err(got, expected)


def test_diffusers_controlnet_matches_diffusers_pipeline(setup):
    version, ref, ours, nets, folder = setup
    ours.unload_controlnets()
    net = ours.load_controlnet(folder / "cn0")
    assert net.name == "cn0" and net.config.hint_widths == HINT_WIDTHS
    theirs = reference_pipeline(ref, nets[0])
    hint = hint_image(0)
    assert compare(ours, theirs, hint, control_scale=0.8) < 1e-3
    assert compare(ours, theirs, hint, "dpmpp_2m", control_scale=1.3) < 1e-3
    # guess mode (the conditional half only, 0.1 ... 1 per block) and a window of the steps
    assert compare(ours, theirs, hint, control_scale=0.9, control_guess_mode=True, control_start=0.2,
                   control_end=0.7) < 1e-3


def test_several_controlnets_summed_match_diffusers_multicontrolnet(setup, tmp_path):
    version, ref, ours, nets, folder = setup
    ours.unload_controlnets()
    ours.load_controlnet(folder / "cn0")
    second = load_controlnet(folder / "cn1")
    save_controlnet_original(second, tmp_path / "second.safetensors")  # the second one from an original file
    ours.load_controlnet(tmp_path / "second.safetensors")
    theirs = reference_pipeline(ref, nets)
    assert compare(ours, theirs, [hint_image(0), hint_image(1)], control_scale=[0.8, 0.5],
                   control_start=[0.0, 0.3], control_end=[1.0, 0.8]) < 1e-3


def test_every_layout_loads_the_same_weights(setup, tmp_path):
    """ldmkit folder, diffusers folder, original file (prefixed or not, .safetensors or .pth):
    the same state dict, for the base's head layout (not in an original file's weights)."""
    version, ref, ours, nets, folder = setup
    expected = nets[0].state_dict()
    net = load_controlnet(folder / "cn0", base=ours.unet.config)
    original = to_original(net.state_dict(), net.config)
    assert all(k.startswith("control_model.") for k in original)
    assert "control_model.input_hint_block.2.weight" in original and "control_model.middle_block_out.0.bias" in original
    stripped = to_original(net.state_dict(), net.config, prefix=False)
    assert "zero_convs.0.0.weight" in stripped
    torch.save({"state_dict": {**original, "model.diffusion_model.out.2.bias": torch.zeros(4)}},
               tmp_path / "control_full.pth")  # a cldm checkpoint: SD's weights beside the ControlNet's
    from safetensors.torch import save_file

    save_file(stripped, tmp_path / "stripped.safetensors")
    paths = [folder / "cn0", save_controlnet(net, tmp_path / "ldmkit"), tmp_path / "control_full.pth",
             tmp_path / "stripped.safetensors", save_controlnet_original(net, tmp_path / "ours.safetensors")]
    for path in paths:
        back = load_controlnet(path, base=ours.unet.config)
        assert back.config == net.config, path
        state = back.state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state), path
    assert from_original(original, net.config).keys() == expected.keys()


def test_exports_are_read_back_by_diffusers(tmp_path):
    """Both layouts with SD's hint encoder (diffusers' original-file reader knows only its 8x one)."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    base = UNet(UNET_PRESETS["tiny"])
    net = ControlNet.from_unet(base)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = net.state_dict()
    save_controlnet_diffusers(net, tmp_path / "diffusers")
    save_controlnet_original(net, tmp_path / "original.safetensors")
    original = str(tmp_path / "original.safetensors")
    theirs = [ControlNetModel.from_pretrained(tmp_path / "diffusers"),
              ControlNetModel.from_single_file(original, config=str(tmp_path / "diffusers"), local_files_only=True)]
    converted = convert_controlnet_checkpoint(to_original(state, net.config), {"layers_per_block": 1})
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)
    x, t, context, hint = torch.randn(1, 4, 8, 8), torch.tensor([40.0]), torch.randn(1, 5, 32), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        mine = net(x, t, hint, context, scale=0.7)
        for model in theirs:
            assert model.state_dict().keys() == state.keys()
            down, mid = model(x, t, context, hint, conditioning_scale=0.7, return_dict=False)
            assert all(rel_err(a, b) < 1e-5 for a, b in zip(mine, [*down, mid]))


def test_a_controlnet_for_another_base_is_refused_naming_both(setup, tmp_path):
    version, ref, ours, nets, folder = setup
    other = "v2" if version == "v1" else "v1"
    widths = {"v1": r"\(32, 64\)", "v2": r"\(64, 128\)"}
    foreign = diffusers_controlnet(tiny_sd(other).unet, seed=3)
    foreign.save_pretrained(tmp_path / "foreign")
    with pytest.raises(ValueError, match=rf"'foreign' was made for another base: it has widths {widths[other]}.*"
                                         rf"the model's UNet has widths {widths[version]}"):
        ours.load_controlnet(tmp_path / "foreign")
    save_controlnet_original(load_controlnet(tmp_path / "foreign"), tmp_path / "foreign.safetensors", prefix=False)
    with pytest.raises(ValueError, match="made for another base"):
        ours.load_controlnet(tmp_path / "foreign.safetensors")
    from safetensors.torch import save_file

    save_file({"lora_unet_down.weight": torch.zeros(2)}, tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointError, match="holds no ControlNet.*lora_unet_down.weight"):
        ours.load_controlnet(tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointError, match="no ControlNet at"):
        ours.load_controlnet(tmp_path / "nothing-here")
