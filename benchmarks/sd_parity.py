"""Stable Diffusion parity at full size: ldmkit's numbers against diffusers' and transformers'.

tests/io/test_stable_diffusion.py runs these checks on tiny models; this script runs them on the
real SD v1.5 and v2.1 (768-v) architectures, with random weights (no SD weights are needed):

    python -m benchmarks.sd_parity [--size full|tiny] [--out docs/results/sd-parity.json]

For each model: build it with diffusers, save it as a diffusers folder, read it back with
diffusers (the reference), and with ldmkit through (a) the folder and (b) a foreign single file
(SD layout, no ldmkit metadata, the folder's tokenizer). Compared, as max |ours - theirs| /
max |theirs|: the UNet at its native latent size, VAE encode (posterior mean) and decode, the
text encoder, and whole generations from the same z_T with ddim, euler and dpmpp_2m. Targets:
networks <= 1e-4, generations <= 1e-3; ldmkit -> single file -> ldmkit and ldmkit -> diffusers
folder -> ldmkit must give identical weights. Exit code 1 if any check fails.

At most two copies of a model are held at once (reference outputs are kept, the reference is
freed before ldmkit loads); --size tiny checks the script in seconds.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from benchmarks.results import write_json
from benchmarks.sd_models import (
    NEGATIVE,
    PROMPT,
    SHAPES,
    TEXT_LENGTH,
    count_params,
    machine,
    make_reference,
    model_shape,
    peak_rss_gib,
    quiet,
    rel_err,
    ru_maxrss_gib,
    timed,
)
from ldmkit import Pipeline
from ldmkit.io.stable_diffusion import save_diffusers_folder, save_single_file

NETWORK_TARGET, GENERATION_TARGET = 1e-4, 1e-3
SAMPLERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}
STEPS, GUIDANCE, TIMESTEP = 4, 7.5, 500.0
PROMPTS = (PROMPT, NEGATIVE)  # the text encoder's inputs
IMAGE_SIZE = {"full": 256, "tiny": 32}  # pixels of the VAE inputs and of the generated images


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_inputs(shape, size: str, seed: int = 1) -> dict:
    """The same inputs for both libraries: UNet input at the native latent size with a random
    77-token context, an image and a latent for the VAE, z_T for the generations."""
    g = torch.Generator().manual_seed(seed)
    pixels = IMAGE_SIZE[size]
    latent = pixels // 2 ** (len(shape.vae["block_out_channels"]) - 1)  # the VAE's factor: 8 (tiny: 2)
    n = shape.latent_size
    return {
        "x": torch.randn(1, 4, n, n, generator=g),                              # (B, C, H, W)
        "t": torch.tensor([TIMESTEP]),
        "context": torch.randn(1, TEXT_LENGTH, shape.context_dim, generator=g),  # (B, L, D)
        "image": torch.rand(1, 3, pixels, pixels, generator=g) * 2 - 1,
        "z": torch.randn(1, 4, latent, latent, generator=g),
        "z_T": torch.randn(1, 4, latent, latent, generator=g),
        "pixels": pixels,
    }


@torch.no_grad()
def reference_outputs(ref, inputs: dict, times: dict) -> dict[str, torch.Tensor]:
    """diffusers' and transformers' outputs, by check name."""
    import diffusers

    out = {}
    with timed(times, "reference: networks"):
        out["unet"] = ref.unet(inputs["x"], inputs["t"], inputs["context"]).sample
        out["vae encode"] = ref.vae.encode(inputs["image"]).latent_dist.mean
        out["vae decode"] = ref.vae.decode(inputs["z"]).sample
        ids = ref.tokenizer(list(PROMPTS), padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                            return_tensors="pt").input_ids
        out["text encoder"] = ref.text_encoder(ids)[0]
    config, pixels = ref.scheduler.config, inputs["pixels"]
    for name, cls in SAMPLERS.items():
        with timed(times, "reference: generations"):
            ref.scheduler = getattr(diffusers, cls).from_config(config)
            out[f"generation {name}"] = ref(
                PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                latents=inputs["z_T"].clone(), output_type="latent", height=pixels, width=pixels,
            ).images
    return out


@torch.no_grad()
def ldmkit_outputs(ours: Pipeline, inputs: dict, times: dict, layout: str) -> dict[str, torch.Tensor]:
    """ldmkit's outputs for the same checks."""
    out = {}
    with timed(times, f"ldmkit ({layout}): networks"):
        out["unet"] = ours.unet(inputs["x"], inputs["t"], inputs["context"])
        out["vae encode"] = ours.vae.encode(inputs["image"]).posterior.mean
        out["vae decode"] = ours.vae.decode(inputs["z"])
        out["text encoder"] = ours.text_encoder(list(PROMPTS))[0]
    pixels = inputs["pixels"]
    with timed(times, f"ldmkit ({layout}): generations"):
        for name in SAMPLERS:
            out[f"generation {name}"] = ours.generate(
                PROMPT, negative_prompt=NEGATIVE, steps=STEPS, guidance=GUIDANCE, sampler=name,
                latents=inputs["z_T"], output="latent", height=pixels, width=pixels,
            )
    return out


def same_model(a: Pipeline, b: Pipeline) -> bool:
    """Same configs and every state dict equal, tensor for tensor."""
    if any(a.describe()[k] != b.describe()[k] for k in ("model", "autoencoder")):
        return False
    for mine, theirs in ((a.unet, b.unet), (a.vae, b.vae), (a.text_encoder.model, b.text_encoder.model)):
        sa, sb = mine.state_dict(), theirs.state_dict()
        if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
            return False
    return True


def round_trips(ours: Pipeline, tmp: Path, times: dict) -> tuple[dict[str, bool], Path]:
    """ldmkit -> single file -> ldmkit and ldmkit -> diffusers folder -> ldmkit; the single file
    is kept for the foreign file."""
    exact = {}
    with timed(times, "round trip: single file"):
        single = save_single_file(ours, tmp / "ldmkit.safetensors")
        exact["single file"] = same_model(Pipeline.from_pretrained(single), ours)
    with timed(times, "round trip: diffusers folder"):
        folder = save_diffusers_folder(ours, tmp / "ldmkit-diffusers")
        exact["diffusers folder"] = same_model(Pipeline.from_pretrained(folder), ours)
        shutil.rmtree(folder)  # GBs of disk
    return exact, single


def write_foreign(single: Path, path: Path) -> Path:
    """What a real SD file looks like: SD-layout keys, no ldmkit metadata (config, tokenizer)."""
    save_file(load_file(single), path, metadata={"format": "pt"})
    single.unlink()
    return path


def errors(ours: dict, theirs: dict) -> dict[str, float]:
    return {name: rel_err(ours[name], theirs[name]) for name in theirs}


def run_model(name: str, size: str, seed: int) -> dict:
    """Every check of one model shape; the models are freed before returning."""
    shape, times = model_shape(name, size), {}
    inputs = make_inputs(shape, size)
    with tempfile.TemporaryDirectory(prefix=f"ldmkit-{name}-") as tmp:
        tmp = Path(tmp)
        log(f"{name}: building the diffusers reference ({size})")
        with timed(times, "reference: build, save, load"):
            ref, folder = make_reference(shape, tmp, seed)
        params = {"unet": count_params(ref.unet), "vae": count_params(ref.vae),
                  "text encoder": count_params(ref.text_encoder)}
        log(f"{name}: reference outputs")
        theirs = reference_outputs(ref, inputs, times)
        del ref  # its outputs are all that is needed from here
        gc.collect()

        log(f"{name}: ldmkit through the diffusers folder")
        with timed(times, "ldmkit: load diffusers folder"):
            ours = Pipeline.from_pretrained(folder)
        result = {"diffusers folder": errors(ldmkit_outputs(ours, inputs, times, "diffusers folder"), theirs)}
        log(f"{name}: round trips")
        exact, single = round_trips(ours, tmp, times)
        del ours
        gc.collect()

        log(f"{name}: ldmkit through a foreign single file")
        with timed(times, "ldmkit: write and load foreign single file"):
            foreign = write_foreign(single, tmp / "sd.safetensors")
            ours = Pipeline.from_pretrained(foreign, tokenizer=folder / "tokenizer")
        result["single file"] = errors(ldmkit_outputs(ours, inputs, times, "single file"), theirs)
        del ours
    gc.collect()
    return {
        "params": params,
        "inputs": {"unet latent": shape.latent_size, "unet timestep": TIMESTEP, "context tokens": TEXT_LENGTH,
                   "vae image": inputs["pixels"], "generation image": inputs["pixels"],
                   "generation latent": inputs["z_T"].shape[-1]},
        "reference scale": {k: v.abs().max().item() for k, v in theirs.items()},  # max |theirs|: the divisor
        "errors": result,
        "round trips exact": exact,
        "seconds": times,
        "peak rss gib": round(peak_rss_gib(), 3),  # so far in this process
    }


def checks(name: str, model: dict) -> list[tuple]:
    """(model, layout, check, value, target, passed) rows."""
    rows = []
    for layout, errs in model["errors"].items():
        for check, value in errs.items():
            target = GENERATION_TARGET if check.startswith("generation") else NETWORK_TARGET
            rows.append((name, layout, check, f"{value:.2e}", f"<= {target:.0e}", value <= target))  # NaN fails
    for layout, exact in model["round trips exact"].items():
        rows.append((name, "round trip", layout, "exact" if exact else "differs", "exact", exact))
    return rows


def print_table(name: str, model: dict) -> None:
    print(f"\n{name}: UNet {model['params']['unet'] / 1e6:.1f}M, VAE {model['params']['vae'] / 1e6:.1f}M, "
          f"text encoder {model['params']['text encoder'] / 1e6:.1f}M parameters")
    print(f"{'layout':<18}{'check':<22}{'value':>10}  {'target':<10}result")
    for _, layout, check, value, target, passed in checks(name, model):
        print(f"{layout:<18}{check:<22}{value:>10}  {target:<10}{'PASS' if passed else 'FAIL'}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in model["seconds"].items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--out", default="docs/results/sd-parity.json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    start, models = time.perf_counter(), {}
    for name in SHAPES:
        models[name] = run_model(name, args.size, args.seed)
        print_table(name, models[name])
    rows = [row for name, model in models.items() for row in checks(name, model)]
    passed = all(row[-1] for row in rows)
    report = {
        "benchmark": "sd-parity", "size": args.size, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "settings": {"steps": STEPS, "guidance": GUIDANCE, "samplers": list(SAMPLERS), "prompt": PROMPT,
                     "negative prompt": NEGATIVE, "text encoder prompts": list(PROMPTS), "seed": args.seed},
        "targets": {"networks": NETWORK_TARGET, "generations": GENERATION_TARGET, "round trips": "exact"},
        "models": models,
        "peak rss gib": round(peak_rss_gib(), 3),
        "ru_maxrss gib": round(ru_maxrss_gib(), 3),
        "total seconds": round(time.perf_counter() - start, 1),
        "passed": passed,
    }
    write_json(report, args.out)
    failed = [row for row in rows if not row[-1]]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks pass; peak RSS {report['peak rss gib']:.2f} GiB; "
          f"{report['total seconds']:.0f} s; {torch.get_num_threads()} threads; written to {args.out}")
    for row in failed:
        print("FAIL: " + " ".join(map(str, row[:5])))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
