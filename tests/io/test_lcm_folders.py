"""Consistency models from diffusers: a tiny random LCM folder (a UNet with time_cond_proj_dim,
LCMScheduler, LatentConsistencyModelPipeline) loads with `lcm` as its default sampler and gives
diffusers' latents; TCD on a plain SD folder and an LCM-LoRA file (kohya keys, conv LoRAs) on SD
give diffusers' latents too. Within 1e-3 relative, the noise between steps drawn as diffusers
draws it (one generator per image)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from benchmarks.sd_models import PROMPT, save_reference, tiny_sd  # noqa: E402
from ldmkit import Pipeline  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def start_latents(count=2):
    return torch.randn(count, 4, 8, 8, generator=torch.Generator().manual_seed(3))


def generators(seed, count=2):
    return [torch.Generator().manual_seed(seed + k) for k in range(count)]


@pytest.fixture(scope="module")
def lcm_folder(tmp_path_factory):
    sd = tiny_sd("v1")
    unet = diffusers.UNet2DConditionModel(**{**sd.unet.config, "time_cond_proj_dim": 32})
    unet.load_state_dict(sd.unet.state_dict(), strict=False)
    with torch.no_grad():
        unet.time_embedding.cond_proj.weight.normal_(0, 0.05)  # random: the guidance input matters
    scheduler = diffusers.LCMScheduler.from_config(sd.scheduler.config)
    pipe = diffusers.LatentConsistencyModelPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("lcm")
    pipe.save_pretrained(folder)
    ref = diffusers.LatentConsistencyModelPipeline.from_pretrained(folder, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    return ref, folder


@pytest.mark.parametrize("steps", [1, 4])
def test_lcm_folder_gives_diffusers_latents(lcm_folder, steps):
    ref, folder = lcm_folder
    ours = Pipeline.from_pretrained(folder)
    assert (ours.defaults.sampler, ours.defaults.steps) == ("lcm", 4) and ours.net.config.guidance_embed_dim == 32
    expected = ref(PROMPT, num_inference_steps=steps, guidance_scale=8.0, latents=start_latents(),
                   num_images_per_prompt=2, height=16, width=16, generator=generators(5), output_type="latent").images
    got = ours.generate(PROMPT, num_images=2, steps=steps, guidance=8.0, latents=start_latents(), height=16, width=16,
                        seed=5, output="latent")
    assert expected.std() > 0.1 and rel_err(got, expected) < 1e-3
    other = ours.generate(PROMPT, num_images=2, steps=steps, guidance=2.0, latents=start_latents(), height=16,
                          width=16, seed=5, output="latent")
    assert rel_err(other, got) > 1e-3  # the guidance input is used


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd-v1")
    save_reference(tiny_sd("v1"), folder, "v1")
    return folder


def test_tcd_on_sd_gives_diffusers_latents(sd_folder):
    ref = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = diffusers.TCDScheduler.from_config(ref.scheduler.config)
    ours = Pipeline.from_pretrained(sd_folder)
    expected = ref(PROMPT, num_inference_steps=4, guidance_scale=3.0, eta=0.3, latents=start_latents(),
                   num_images_per_prompt=2, height=16, width=16, generator=generators(5), output_type="latent").images
    got = ours.generate(PROMPT, num_images=2, steps=4, guidance=3.0, sampler="tcd", latents=start_latents(),
                        height=16, width=16, seed=5, output="latent")
    assert rel_err(got, expected) < 1e-3


def test_lcm_lora_with_conv_layers_gives_diffusers_latents(sd_folder, tmp_path):
    pytest.importorskip("peft")
    from ldmkit.finetune.lora import LoRANetwork
    from ldmkit.finetune.lora_formats import save_lora

    ours = Pipeline.from_pretrained(sd_folder)
    network = LoRANetwork.create(ours, rank=4, targets=("attention", "feed_forward", "conv"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, adapter in network.items():
            adapter.up.weight.copy_(0.3 * torch.randn(adapter.up.weight.shape, generator=g))
    path = save_lora(network, tmp_path / "lcm-lora.safetensors", layout="kohya")
    ref = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = diffusers.LCMScheduler.from_config(ref.scheduler.config)
    ref.load_lora_weights(str(path))
    expected = ref(PROMPT, num_inference_steps=4, guidance_scale=1.0, latents=start_latents(),
                   num_images_per_prompt=2, height=16, width=16, generator=generators(5), output_type="latent").images
    ours.load_lora(path)
    got = ours.generate(PROMPT, num_images=2, steps=4, guidance=1.0, sampler="lcm", latents=start_latents(),
                        height=16, width=16, seed=5, output="latent")
    plain = Pipeline.from_pretrained(sd_folder).generate(PROMPT, num_images=2, steps=4, guidance=1.0, sampler="lcm",
                                                         latents=start_latents(), height=16, width=16, seed=5,
                                                         output="latent")
    assert rel_err(plain, expected) > 1e-2  # the LoRA did something
    assert rel_err(got, expected) < 1e-3


def test_custom_timesteps_give_diffusers_latents(lcm_folder):
    ref, folder = lcm_folder
    ours = Pipeline.from_pretrained(folder)
    expected = ref(PROMPT, timesteps=[999, 639, 259], guidance_scale=6.0, latents=start_latents(),
                   num_images_per_prompt=2, height=16, width=16, generator=generators(5), output_type="latent").images
    got = ours.generate(PROMPT, num_images=2, timesteps=[999, 639, 259], guidance=6.0, latents=start_latents(),
                        height=16, width=16, seed=5, output="latent")
    assert rel_err(got, expected) < 1e-3
    with pytest.raises(ValueError, match="strictly descending"):
        ours.generate(PROMPT, timesteps=[259, 999])
    with pytest.raises(ValueError, match="at most original_inference_steps = 50"):
        ours.generate(PROMPT, steps=60)
