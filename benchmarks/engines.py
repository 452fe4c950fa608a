"""The CPU engines of benchmarks/cpu_engines.py behind one call shape: each loads the same
diffusers folder and returns generate() -> one image, (1, 3, H, W) float32 in [0, 1].

    ldmkit           Pipeline.from_pretrained(folder), its own dpmpp_2m / lcm samplers
    ldmkit-fast      Pipeline.from_pretrained(folder, fast=True), where that keyword exists
    ldmkit-compile   fast="compile": the UNet and VAE decoder run by OpenVINO (converted in the
                     first call), in bf16 on CPUs with bf16 units
    ldmkit-compile-f32  fast="openvino-f32": the same graphs computed in f32 (openvino-f32's class)
    ldmkit-compile-tiny  the same, decoding with a TAESD (save_taesd: random weights, so its image
                     is another image and only its time counts)
    diffusers        StableDiffusionPipeline, DPMSolverMultistepScheduler / LCMScheduler
    openvino-*       diffusers' pipeline (same scheduler loop and text encoder, in torch) whose
                     UNet and VAE decoder are OpenVINO models: converted once from diffusers'
                     modules (convert_openvino, saved as f32 IR), read back and compiled for CPU
                     with INFERENCE_NUM_THREADS; "-f32" adds INFERENCE_PRECISION_HINT=f32,
                     "-default" keeps OpenVINO's own hint (bf16 on CPUs with bf16 units)
    sdcpp-*          stable-diffusion.cpp (stable-diffusion-cpp-python) reading the folder (its text
                     encoder's tensors renamed, sdcpp_folder), its own k-diffusion samplers
                     "dpm++2m" (scheduler "discrete") and "lcm" (scheduler "lcm"), wtype f32 or
                     f16; its Conv2d kernels are f16 under either

ldmkit, diffusers and the OpenVINO rows start from the same z_T and draw the LCM's noise from one
torch generator seeded `seed`, so their images agree up to arithmetic. stable-diffusion.cpp has
its own RNG and its own (real) CLIP tokenizer, not the folder's stand-in: its image is another
image, so only that it ran is reported.
"""

from __future__ import annotations

import inspect
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.sd_models import PROMPT

SEED = 0


@dataclass(frozen=True)
class Setting:
    """One way of sampling, the same for every engine."""

    name: str
    steps: int
    guidance: float
    ldmkit: str        # ldmkit's sampler
    diffusers: str     # diffusers' scheduler class
    sdcpp: tuple       # stable-diffusion.cpp's (sample_method, scheduler)


SETTINGS = {
    "dpm20": Setting("dpm20", 20, 7.5, "dpmpp_2m", "DPMSolverMultistepScheduler", ("dpm++2m", "discrete")),
    # LCM: the same UNet (as an LCM-LoRA merged into SD v1.5 is), 4 steps, no guidance (batch 1)
    "lcm4": Setting("lcm4", 4, 1.0, "lcm", "LCMScheduler", ("lcm", "lcm")),
}


# ldmkit's rows: (fast=, tiny decoder)
LDMKIT_ENGINES = {"ldmkit": (False, False), "ldmkit-fast": (True, False), "ldmkit-compile": ("compile", False),
                  "ldmkit-compile-tiny": ("compile", True), "ldmkit-compile-f32": ("openvino-f32", False)}


@dataclass(frozen=True)
class Run:
    """What one engine process runs."""

    engine: str
    setting: str
    folder: str          # the diffusers folder
    pixels: int          # image side
    latent: int          # latent side (pixels / the VAE's factor)
    threads: int
    ir_dir: str = ""     # OpenVINO: where convert_openvino saved the IR

    @property
    def spec(self) -> Setting:
        return SETTINGS[self.setting]


def start_latents(latent: int) -> torch.Tensor:
    """z_T, the same for every engine that takes one."""
    return torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(SEED))  # (B, C, H, W)


# ---- ldmkit ---------------------------------------------------------------------------------------
def has_fast() -> bool:
    from ldmkit import Pipeline

    return "fast" in inspect.signature(Pipeline.from_pretrained).parameters


def load_ldmkit(run: Run, fast: bool | str = False, tiny: bool = False) -> tuple[Callable, dict]:
    from ldmkit import Pipeline

    pipe = Pipeline.from_pretrained(run.folder, fast=fast) if fast else Pipeline.from_pretrained(run.folder)
    if tiny:
        pipe.use_tiny_decoder(path=taesd_folder(run.folder))
    s, z_T = run.spec, start_latents(run.latent)

    def generate() -> torch.Tensor:
        image = pipe.generate(PROMPT, steps=s.steps, guidance=s.guidance, sampler=s.ldmkit, seed=SEED, latents=z_T,
                              output="tensor", height=run.pixels, width=run.pixels)
        return ((image.float() + 1) / 2).clamp(0, 1)  # ldmkit's tensors are in [-1, 1]

    return generate, {"sampler": s.ldmkit, "fast": fast, "path": pipe.fast_path.describe(), "tiny decoder": tiny}


def taesd_folder(folder: str | Path) -> Path:
    return Path(folder).parent / "taesd"


def save_taesd(folder: str | Path) -> Path:
    """A TAESD for the folder's VAE (diffusers' AutoencoderTiny at TAESD's widths, one upsampling per
    factor of 2 of the VAE), seeded random weights: its time does not depend on them."""
    from diffusers import AutoencoderTiny

    vae = json.loads((Path(folder) / "vae" / "config.json").read_text())
    levels = len(vae["block_out_channels"])  # the VAE downsamples levels - 1 times
    torch.manual_seed(SEED)
    taesd = AutoencoderTiny(in_channels=vae["in_channels"], out_channels=vae["out_channels"],
                            latent_channels=vae["latent_channels"], encoder_block_out_channels=(64,) * levels,
                            decoder_block_out_channels=(64,) * levels, num_encoder_blocks=(1,) + (3,) * (levels - 1),
                            num_decoder_blocks=(3,) * (levels - 1) + (1,))
    taesd.save_pretrained(taesd_folder(folder))
    return taesd_folder(folder)


# ---- diffusers, and diffusers' loop around OpenVINO's networks -------------------------------------
def diffusers_call(pipe, run: Run) -> Callable:
    """generate() for a StableDiffusionPipeline with the setting's scheduler."""
    import diffusers

    s, z_T = run.spec, start_latents(run.latent)
    pipe.scheduler = getattr(diffusers, s.diffusers).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def generate() -> torch.Tensor:
        return pipe(PROMPT, num_inference_steps=s.steps, guidance_scale=s.guidance, latents=z_T.clone(),
                    generator=[torch.Generator().manual_seed(SEED)], output_type="pt",
                    height=run.pixels, width=run.pixels).images.float()

    return generate


def load_diffusers(run: Run) -> tuple[Callable, dict]:
    from benchmarks.sd_models import load_reference

    return diffusers_call(load_reference(Path(run.folder)), run), {"scheduler": run.spec.diffusers}


class UNetExport(torch.nn.Module):
    """diffusers' UNet as a plain tensors-in, tensor-out function, for tracing."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class DecoderExport(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z, return_dict=False)[0]


def convert_openvino(folder: str, ir_dir: str, latent: int) -> dict:
    """diffusers' UNet and VAE decoder -> OpenVINO IR (f32 weights: compress_to_fp16=False), with
    example inputs of the generation's shapes; the batch is left to the reader (reshape)."""
    import openvino as ov
    from diffusers import AutoencoderKL, UNet2DConditionModel

    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # diffusers' shape asserts, traced
    out, seconds = Path(ir_dir), {}
    out.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(Path(folder) / "unet").eval()
    c = unet.config
    example = (torch.randn(2, c.in_channels, latent, latent), torch.tensor(999.0),   # (B, C, H, W), t
               torch.randn(2, 77, c.cross_attention_dim))                            # (B, L, D)
    start = time.perf_counter()
    with torch.no_grad():
        model = ov.convert_model(UNetExport(unet), example_input=example)
    ov.save_model(model, out / "unet.xml", compress_to_fp16=False)
    seconds["unet"] = round(time.perf_counter() - start, 3)
    del unet, model
    vae = AutoencoderKL.from_pretrained(Path(folder) / "vae").eval()
    start = time.perf_counter()
    with torch.no_grad():
        model = ov.convert_model(DecoderExport(vae), example_input=(torch.randn(1, 4, latent, latent),))
    ov.save_model(model, out / "vae_decoder.xml", compress_to_fp16=False)
    seconds["vae decoder"] = round(time.perf_counter() - start, 3)
    return {"convert seconds": seconds}


class OpenVINOUNet(torch.nn.Module):
    """What StableDiffusionPipeline calls as its unet: a compiled OpenVINO model."""

    def __init__(self, compiled, config):
        super().__init__()
        self.compiled, self.config = compiled, config

    device, dtype = torch.device("cpu"), torch.float32

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, cross_attention_kwargs=None,
                added_cond_kwargs=None, return_dict=False):
        if timestep_cond is not None or cross_attention_kwargs or added_cond_kwargs:
            raise ValueError("the OpenVINO UNet takes (sample, timestep, encoder_hidden_states) only")
        t = np.asarray(float(timestep), dtype=np.float32)
        out = self.compiled([sample.numpy(), t, encoder_hidden_states.numpy()])[0]
        return (torch.from_numpy(out),)


class OpenVINODecoder(torch.nn.Module):
    """What StableDiffusionPipeline calls as its vae (decode only)."""

    def __init__(self, compiled, config):
        super().__init__()
        self.compiled, self.config = compiled, config

    device, dtype = torch.device("cpu"), torch.float32

    def decode(self, z, return_dict=False, generator=None):
        return (torch.from_numpy(self.compiled([z.numpy()])[0]),)


def openvino_precision(engine: str) -> str | None:
    """"openvino-f32" -> "f32"; "openvino-default" -> None (OpenVINO's own hint)."""
    hint = engine.removeprefix("openvino-")
    return None if hint == "default" else hint


def load_openvino(run: Run) -> tuple[Callable, dict]:
    """diffusers' pipeline with the IR's UNet and decoder, compiled at the generation's static shapes."""
    import openvino as ov
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.configuration_utils import FrozenDict
    from transformers import CLIPTextModel, CLIPTokenizer

    core, folder, ir = ov.Core(), Path(run.folder), Path(run.ir_dir)
    options = {"INFERENCE_NUM_THREADS": run.threads}
    precision = openvino_precision(run.engine)
    if precision is not None:
        options["INFERENCE_PRECISION_HINT"] = precision
    batch = 2 if run.spec.guidance > 1 else 1  # classifier-free guidance: both halves in one call
    unet = core.read_model(ir / "unet.xml")
    unet.reshape({0: [batch, 4, run.latent, run.latent], 1: [], 2: [batch, 77, unet.inputs[2].partial_shape[2]]})
    decoder = core.read_model(ir / "vae_decoder.xml")
    decoder.reshape({0: [1, 4, run.latent, run.latent]})
    compiled_unet = core.compile_model(unet, "CPU", options)
    compiled_decoder = core.compile_model(decoder, "CPU", options)
    pipe = StableDiffusionPipeline(
        vae=OpenVINODecoder(compiled_decoder, FrozenDict(AutoencoderKL.load_config(folder / "vae"))),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=OpenVINOUNet(compiled_unet, FrozenDict(UNet2DConditionModel.load_config(folder / "unet"))),
        scheduler=DPMSolverMultistepScheduler.from_pretrained(folder / "scheduler"),  # replaced by the setting's
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    used = compiled_unet.get_property("INFERENCE_PRECISION_HINT")
    return diffusers_call(pipe, run), {"scheduler": run.spec.diffusers, "compile options": options,
                                       "inference precision": used.get_type_name(), "batch": batch}


# ---- stable-diffusion.cpp ---------------------------------------------------------------------------
def sdcpp_folder(folder: str | Path) -> Path:
    """The diffusers folder as stable-diffusion.cpp reads it: the same files, except that the text
    encoder's tensors are named "text_model.*", as in SD's released folders. transformers 5 saves
    CLIPTextModel without that prefix, and stable-diffusion.cpp finds the model's version by the
    token embedding's full name. Made once beside the folder; the UNet and VAE are links."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    out = folder.parent / (folder.name + "-sdcpp")
    if (out / "text_encoder" / "model.safetensors").is_file():
        return out
    (out / "text_encoder").mkdir(parents=True, exist_ok=True)
    for part in ("unet", "vae"):
        if not (out / part).exists():
            (out / part).symlink_to((folder / part).resolve(), target_is_directory=True)
    tensors = load_file(folder / "text_encoder" / "model.safetensors")
    named = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in tensors.items()}
    save_file(named, out / "text_encoder" / "model.safetensors.tmp")
    (out / "text_encoder" / "model.safetensors.tmp").rename(out / "text_encoder" / "model.safetensors")
    return out


def load_sdcpp(run: Run) -> tuple[Callable, dict]:
    from stable_diffusion_cpp import StableDiffusion

    wtype = run.engine.removeprefix("sdcpp-")
    model = StableDiffusion(model_path=str(sdcpp_folder(run.folder)), n_threads=run.threads, wtype=wtype,
                            vae_decode_only=True, verbose=False)
    s = run.spec
    method, scheduler = s.sdcpp

    def generate() -> torch.Tensor:
        image = model.generate_image(PROMPT, negative_prompt="", width=run.pixels, height=run.pixels,
                                     cfg_scale=s.guidance, sample_method=method, scheduler=scheduler,
                                     sample_steps=s.steps, seed=SEED)[0]
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255  # (H, W, 3)
        return torch.from_numpy(pixels).permute(2, 0, 1)[None]             # (1, 3, H, W)

    return generate, {"wtype": wtype, "sample_method": method, "scheduler": scheduler}


def load_engine(run: Run) -> tuple[Callable, dict]:
    if run.engine in LDMKIT_ENGINES:
        return load_ldmkit(run, *LDMKIT_ENGINES[run.engine])
    if run.engine == "diffusers":
        return load_diffusers(run)
    if run.engine.startswith("openvino-"):
        return load_openvino(run)
    if run.engine.startswith("sdcpp-"):
        return load_sdcpp(run)
    raise ValueError(f"unknown engine {run.engine!r}")


def versions() -> dict:
    """The engines' versions (None: not installed), and what stable-diffusion.cpp was built for."""
    found = {}
    for name, module in (("openvino", "openvino"), ("stable-diffusion-cpp-python", "stable_diffusion_cpp")):
        try:
            found[name] = __import__(module).__version__
        except ImportError:
            found[name] = None
    if found["stable-diffusion-cpp-python"]:
        from stable_diffusion_cpp import stable_diffusion_cpp as sd_cpp

        found["stable-diffusion.cpp system info"] = sd_cpp.sd_get_system_info().decode().strip()
    return found
