"""The fast path's levers, one by one, on Stable Diffusion v1.5's layout: per-UNet-step time,
first-call (convert / compile) time, whole-generation time and parity with float32 eager.

    python -m benchmarks.fast_path [--size small|full] [--threads 1] [--steps 20] [--repeats 3]
                                   [--inductor] [--out docs/results/fast-path.json]

One process builds SD v1.5 (random weights, benchmarks/sd_models.py; "small": the CPU-width
layout at 256 px, 32 x 32 latents; "full": the real one at 512 px) and loads it with ldmkit.
Each lever is ldmkit.pipelines.fast.apply on a copy of that pipeline: fp32 eager (the default),
bf16 weights, channels_last UNet (fp32, bf16), OpenVINO (f32, bf16; when installed), inductor
(--inductor: it compiled for 13 minutes here), and DeepCache with interval 2 and 3 on fp32 and
on the path fast=True picks. A UNet step is core.call_net at batch 2 (classifier-free guidance's
pair), as the sampler calls it; steps and generations are timed in interleaved rounds, so a
change in the machine's load hits every lever alike. Generation: one image, dpmpp_2m, guidance
7.5, decoded to a tensor. Parity: max |lever - fp32| / max |fp32| of a UNet step's eps, and the
mean and max |difference| of the generated images (in [-1, 1]).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.results import write_json
from benchmarks.sd_models import (
    NEGATIVE,
    PROMPT,
    build_diffusers,
    machine,
    model_shape,
    quiet,
    rel_err,
    save_reference,
    timed,
)
from ldmkit.nets.deepcache import DeepCache, shallow_forward
from ldmkit.pipelines import Pipeline
from ldmkit.pipelines.core import call_net
from ldmkit.pipelines.fast import BF16_FLAGS, FastPath, apply, choose_fast_path, cpu_flags, openvino_installed

GUIDANCE, SEED = 7.5, 0
PIXELS = {"tiny": 32, "small": 256, "full": 512}  # tiny: a smoke run of this script
BF16 = torch.bfloat16


def levers(args) -> dict[str, tuple[FastPath, int | None]]:
    """name -> (fast path, DeepCache interval)."""
    chosen = choose_fast_path("cpu", True)
    found = {
        "fp32 eager": (FastPath(), None),
        "bf16 weights": (FastPath(dtype=BF16), None),
        "fp32 channels_last": (FastPath(channels_last=True), None),
        "bf16 channels_last": (FastPath(dtype=BF16, channels_last=True), None),
    }
    if openvino_installed() and not args.no_openvino:
        found["openvino f32"] = (FastPath(compile="openvino", compile_precision="f32"), None)
        found["openvino bf16"] = (FastPath(compile="openvino", compile_precision="bf16"), None)
    if args.inductor:
        found["inductor fp32"] = (FastPath(compile="inductor"), None)
    for n in (2, 3):
        found[f"fp32 deepcache {n}"] = (FastPath(), n)
        if chosen != FastPath():
            found[f"fast=True deepcache {n}"] = (chosen, n)
    return found


def unet_inputs(pipe: Pipeline, latent: int):
    """What the sampler hands the network at one guided step: (x, t, cond) at batch 2, the
    conditioning in the network's dtype."""
    x = torch.randn(2, 4, latent, latent, generator=torch.Generator().manual_seed(1))
    return x, 500.0, pipe.encode_prompts([PROMPT, NEGATIVE])


class ShallowStep:
    """One DeepCache call between refreshes (branch b, fp32 eager), timed into .times."""

    def __init__(self, pipe: Pipeline, inputs, branch: int):
        x, t, cond = inputs
        self.cache = DeepCache(pipe.net, 2, branch)
        self.cache(x, t, **cond)  # the refresh: h_deep
        self.args, self.times = (x, t, cond), []

    def __call__(self):
        x, t, cond = self.args
        start = time.perf_counter()
        shallow_forward(self.cache.net, x, t, self.cache.deep, self.cache.branch, **cond)
        self.times.append(time.perf_counter() - start)


def shallow_steps(pipe: Pipeline, inputs) -> dict[int, ShallowStep]:
    return {b: ShallowStep(pipe, inputs, b) for b in range(pipe.net.config.num_res_blocks + 1)}


def generation(pipe: Pipeline, steps: int, pixels: int) -> torch.Tensor:
    return pipe.generate(PROMPT, negative_prompt=NEGATIVE, steps=steps, guidance=GUIDANCE, sampler="dpmpp_2m",
                         seed=SEED, output="tensor", height=pixels, width=pixels)


@torch.no_grad()
def benchmark(args, tmp: Path) -> dict:
    shape = model_shape("sd-v1.5", args.size)
    reference = build_diffusers(shape, tmp / "stand-in-tokenizer")
    folder = save_reference(reference, tmp / "model", shape.version)
    del reference
    base = Pipeline.from_pretrained(folder)
    pixels = PIXELS[args.size]
    latent = base.latent_shape_for(pixels, pixels)[1]
    pipes, first_call, deepcache, inputs = {}, {}, {}, {}
    for name, (path, interval) in levers(args).items():
        pipe = apply(copy.deepcopy(base), path) if path != FastPath() else base
        pipes[name], deepcache[name], inputs[name] = pipe, interval, unet_inputs(pipe, latent)
        if interval is None:  # the first call: tracing, converting, compiling where the lever does
            x, t, cond = inputs[name]
            with timed(first_call, name):
                call_net(pipe, x, t, **cond)

    step_times = {name: [] for name in pipes if deepcache[name] is None}
    shallow = shallow_steps(base, inputs["fp32 eager"])
    for _ in range(args.repeats):  # interleaved rounds
        for name in step_times:
            x, t, cond = inputs[name]
            start = time.perf_counter()
            call_net(pipes[name], x, t, **cond)
            step_times[name].append(time.perf_counter() - start)
        for step in shallow.values():
            step()
    eps = {name: call_net(pipes[name], *inputs[name][:2], **inputs[name][2]) for name in step_times}

    generation_times, images = {name: [] for name in pipes}, {}
    for _ in range(args.gen_repeats):
        for name, pipe in pipes.items():
            pipe.deepcache_interval = deepcache[name]
            start = time.perf_counter()
            images[name] = generation(pipe, args.steps, pixels)
            generation_times[name].append(time.perf_counter() - start)
            pipe.deepcache_interval = None

    fp32 = "fp32 eager"
    results = {}
    for name in pipes:
        row = {"path": pipes[name].fast_path.describe(), "deepcache": deepcache[name],
               "generation_s": round(statistics.median(generation_times[name]), 3),
               "image_mean_abs_diff": round((images[name] - images[fp32]).abs().mean().item(), 5),
               "image_max_abs_diff": round((images[name] - images[fp32]).abs().max().item(), 4)}
        if name in step_times:
            row |= {"unet_step_ms": round(1000 * statistics.median(step_times[name]), 1),
                    "unet_step_ms_min": round(1000 * min(step_times[name]), 1),
                    "first_call_s": first_call[name], "eps_rel_err": round(rel_err(eps[name], eps[fp32]), 6)}
        row["speedup_generation"] = round(statistics.median(generation_times[fp32]) / row["generation_s"], 3)
        results[name] = row
    full = statistics.median(step_times[fp32])
    branches = {f"branch {b}": {"shallow_step_ms": round(1000 * statistics.median(s.times), 1),
                                "share_of_full_step": round(statistics.median(s.times) / full, 3)}
                for b, s in shallow.items()}
    return {"deepcache_fp32": branches, "size": args.size,
            "pixels": pixels, "latent": latent, "unet_batch": 2, "steps": args.steps,
            "sampler": "dpmpp_2m", "guidance": GUIDANCE, "repeats": args.repeats, "gen_repeats": args.gen_repeats,
            "fast_true_picks": choose_fast_path("cpu", True).describe(), "results": results}


def print_table(report: dict) -> None:
    print(f"{'lever':26} {'step ms':>9} {'first s':>8} {'eps err':>9} {'gen s':>7} {'x fp32':>7} {'img mean':>9}")
    for name, r in report["results"].items():
        step = f"{r['unet_step_ms']:9.1f} {r['first_call_s']:8.2f} {r['eps_rel_err']:9.2e}" if "unet_step_ms" in r \
            else f"{'':9} {'':8} {'':9}"
        print(f"{name:26} {step} {r['generation_s']:7.2f} {r['speedup_generation']:7.2f} "
              f"{r['image_mean_abs_diff']:9.4f}")
    for name, r in report["deepcache_fp32"].items():
        print(f"DeepCache shallow step, {name}: {r['shallow_step_ms']:.1f} ms, "
              f"{r['share_of_full_step']:.2f} of a full step")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(PIXELS), default="small")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="UNet steps timed per lever (interleaved)")
    parser.add_argument("--gen-repeats", type=int, default=1, help="generations timed per lever (interleaved)")
    parser.add_argument("--inductor", action="store_true", help="also torch.compile (inductor): minutes to compile")
    parser.add_argument("--no-openvino", action="store_true", help="leave out the OpenVINO levers")
    parser.add_argument("--out", default="docs/results/fast-path.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fast-path-") as tmp:
        report = benchmark(args, Path(tmp))
    flags = cpu_flags()
    report["machine"] = machine() | {
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx")) or f in BF16_FLAGS),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "openvino": openvino_version()}
    print_table(report)
    print(f"wrote {write_json(report, args.out)}")
    return 0


def openvino_version() -> str | None:
    if not openvino_installed():
        return None
    import openvino

    return openvino.__version__


if __name__ == "__main__":
    raise SystemExit(main())
