"""ldmkit and diffusers behind one interface, for benchmarks/vs_diffusers.py: UNet output, VAE
encode / decode and whole generations from the same inputs, each library called as a user
calls it."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from benchmarks.sd_models import PROMPT
from benchmarks.sd_speed import load_diffusers

GUIDANCE, SAMPLER = 7.5, "dpmpp_2m"  # DPM-Solver++(2M) = diffusers' DPMSolverMultistepScheduler


class Ldmkit:
    """ldmkit's pipeline converted from the folder, with the speed options applied."""

    def __init__(self, folder: Path, channels_last: bool = False):
        from ldmkit import Pipeline

        self.pipe = Pipeline.from_pretrained(folder)
        self.channels_last = channels_last
        if channels_last:
            self.pipe.net.to(memory_format=torch.channels_last)
            self.pipe.autoencoder.to(memory_format=torch.channels_last)
        self.eager_unet = self.pipe.net  # the module itself, also when pipe.net is compiled
        self.compile = {"requested": False, "active": False}

    def fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def compile_unet(self, example: tuple, backend: str = "inductor") -> None:
        """torch.compile is lazy: a failure shows at the first call, so make it here."""
        self.compile = {"requested": True, "active": False, "backend": backend}
        try:
            compiled = torch.compile(self.eager_unet, backend=backend)
            with torch.no_grad():
                compiled(*example)
        except Exception as error:  # noqa: BLE001 (any backend failure means: run eagerly)
            message = f"{type(error).__name__}: {str(error).strip()[:500]}"
            print(f"WARNING: torch.compile of ldmkit's UNet failed, running it eagerly: {message}", file=sys.stderr)
            self.compile["error"] = message
            return
        self.pipe.net = compiled  # Pipeline reads .config and .parameters() through the wrapper
        self.compile["active"] = True

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.net

    def unet_output(self, x, t, context, module=None):
        return (self.pipe.net if module is None else module)(self.fmt(x), t, context)

    def vae_encode(self, image):
        return self.pipe.autoencoder.encode(self.fmt(image)).posterior.mean

    def vae_decode(self, z):
        return self.pipe.autoencoder.decode(self.fmt(z))

    def generate(self, z_T: torch.Tensor, steps: int) -> torch.Tensor:
        """Images in [0, 1], (n, 3, H, W), from z_T (n, 4, h, w)."""
        pixels = z_T.shape[-1] * self.pipe.autoencoder.config.downsampling_factor
        images = self.pipe.generate([PROMPT] * len(z_T), steps=steps, guidance=GUIDANCE, sampler=SAMPLER,
                                    latents=self.fmt(z_T), output="tensor", height=pixels, width=pixels)
        return (images + 1) / 2  # ldmkit's tensors are in [-1, 1], diffusers' "pt" images in [0, 1]


class Diffusers:
    """diffusers' StableDiffusionPipeline read from the folder, DPM-Solver++(2M) as its scheduler."""

    def __init__(self, folder: Path):
        self.pipe = load_diffusers(folder)
        self.eager_unet = self.pipe.unet

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.unet

    def unet_output(self, x, t, context, module=None):
        return (self.pipe.unet if module is None else module)(x, t, encoder_hidden_states=context).sample

    def vae_encode(self, image):
        return self.pipe.vae.encode(image).latent_dist.mean

    def vae_decode(self, z):
        return self.pipe.vae.decode(z).sample

    def generate(self, z_T: torch.Tensor, steps: int) -> torch.Tensor:
        pixels = z_T.shape[-1] * self.pipe.vae_scale_factor
        return self.pipe([PROMPT] * len(z_T), num_inference_steps=steps, guidance_scale=GUIDANCE,
                         latents=z_T.clone(), output_type="pt", height=pixels, width=pixels).images
