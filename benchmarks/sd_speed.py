"""Stable Diffusion v1.5 generation time and peak memory: ldmkit against diffusers, on CPU.

    python -m benchmarks.sd_speed [--size full|tiny] [--steps 20] [--resolution 512] [--repeats 1]
                                  [--out docs/results/sd-speed.json]

One process builds SD v1.5 with diffusers (random weights: the time does not depend on them),
saves it as a diffusers folder and loads it with both libraries. Whole generations (prompt
encoding, sampling with dpmpp_2m = DPMSolverMultistepScheduler at guidance 7.5, VAE decode to an
image tensor) from the same prompt and z_T are timed alternately, ldmkit then diffusers, for
--repeats rounds after a 1-step warm-up of each, with the same torch threads. Neither call is
wrapped in extra no_grad / inference_mode: each library runs under the one it sets itself.

Peak memory (ru_maxrss) comes from fresh processes (--rss-child), one per library: ldmkit
loading an SD single file it wrote (fp32), diffusers loading the folder; each generates one
image at 2 steps.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.results import write_json
from benchmarks.sd_models import (
    PROMPT,
    load_reference,
    machine,
    make_reference,
    model_shape,
    peak_rss_gib,
    quiet,
    rel_err,
    ru_maxrss_gib,
    timed,
)

MODEL, GUIDANCE, SEED = "sd-v1.5", 7.5, 0
RESOLUTION = {"full": 512, "tiny": 32}  # tiny: its VAE and UNet halve twice, not 8x then 8x
RSS_STEPS = 2
ROOT = Path(__file__).resolve().parent.parent  # the repository root: the memory children run from it with -m


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def time_calls(obj, method: str, seconds: dict, part: str) -> None:
    """Wrap obj.method (on this instance only) so that each call adds its wall time to
    seconds[part]: the parts of a generation, measured inside the timed generation itself."""
    inner = getattr(obj, method)

    def timed_call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - start

    setattr(obj, method, timed_call)


def ldmkit_generation(pipe, z_T: torch.Tensor | None, steps: int, pixels: int) -> torch.Tensor:
    """One image in [0, 1], (1, 3, H, W); z_T None: the library draws it."""
    image = pipe.generate(PROMPT, steps=steps, guidance=GUIDANCE, sampler="dpmpp_2m", latents=z_T,
                          output="tensor", height=pixels, width=pixels)
    return (image + 1) / 2  # ldmkit's tensors are in [-1, 1], diffusers' "pt" images in [0, 1]


def diffusers_generation(pipe, z_T: torch.Tensor | None, steps: int, pixels: int) -> torch.Tensor:
    latents = None if z_T is None else z_T.clone()
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, latents=latents, output_type="pt",
                height=pixels, width=pixels).images


def load_ldmkit(path: Path):
    from ldmkit import Pipeline

    return Pipeline.from_pretrained(path)


def load_diffusers(folder: Path):
    return use_dpm_solver(load_reference(folder))


def use_dpm_solver(pipe):
    """SD's own scheduler (PNDM for v1.5) swapped for DPM-Solver++(2M), ldmkit's dpmpp_2m."""
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    return pipe


LIBRARIES = {"ldmkit": (load_ldmkit, ldmkit_generation), "diffusers": (load_diffusers, diffusers_generation)}


def timed_rounds(runners: dict, steps: int, repeats: int) -> tuple[dict, dict, dict]:
    """runners: library -> (generate(steps), the parts dict its wrappers fill). One 1-step
    warm-up each, then `repeats` rounds in alternation. Returns (seconds per round, mean parts,
    last images)."""
    seconds, parts, images = {k: [] for k in runners}, {k: [] for k in runners}, {}
    for library, (generate, _) in runners.items():
        log(f"warm-up {library} (1 step)")
        generate(1)
    for round_ in range(repeats):
        for library, (generate, part_seconds) in runners.items():
            log(f"round {round_ + 1}/{repeats}: {library}")
            part_seconds.clear()
            start = time.perf_counter()
            images[library] = generate(steps)
            seconds[library].append(round(time.perf_counter() - start, 3))
            parts[library].append({**part_seconds, "sampling": seconds[library][-1] - sum(part_seconds.values())})
    mean_parts = {k: {p: round(sum(r[p] for r in rows) / len(rows), 3) for p in rows[0]} for k, rows in parts.items()}
    return seconds, mean_parts, images


def speed(args, tmp: Path) -> tuple[dict, Path, Path]:
    """The alternating timings in this process; returns (results, single file, diffusers folder)."""
    from ldmkit.io.stable_diffusion import save_single_file

    shape, setup = model_shape(MODEL, args.size), {}
    log(f"building {MODEL} ({args.size}) with diffusers")
    with timed(setup, "diffusers: build, save, load"):
        theirs, folder = make_reference(shape, tmp, SEED)
        use_dpm_solver(theirs)
    with timed(setup, "ldmkit: load diffusers folder"):
        ours = load_ldmkit(folder)
    gc.collect()
    factor = 2 ** (len(shape.vae["block_out_channels"]) - 1)
    z_T = torch.randn(1, 4, args.resolution // factor, args.resolution // factor,
                      generator=torch.Generator().manual_seed(SEED))  # (B, C, H, W)
    part_seconds = {"ldmkit": {}, "diffusers": {}}
    time_calls(ours, "encode_prompts", part_seconds["ldmkit"], "text")
    time_calls(ours.autoencoder, "from_latent", part_seconds["ldmkit"], "decode")  # what decoding runs
    time_calls(theirs, "encode_prompt", part_seconds["diffusers"], "text")
    time_calls(theirs.vae, "decode", part_seconds["diffusers"], "decode")
    runners = {
        "ldmkit": (lambda steps: ldmkit_generation(ours, z_T, steps, args.resolution), part_seconds["ldmkit"]),
        "diffusers": (lambda steps: diffusers_generation(theirs, z_T, steps, args.resolution),
                      part_seconds["diffusers"]),
    }
    seconds, parts, images = timed_rounds(runners, args.steps, args.repeats)
    with timed(setup, "ldmkit: write single file"):
        single = save_single_file(ours, tmp / f"{MODEL}.safetensors")  # fp32, for the memory child
    mean = {k: round(sum(v) / len(v), 3) for k, v in seconds.items()}
    result = {
        "seconds per generation": seconds,
        "mean seconds": mean,
        "ratio diffusers/ldmkit": round(mean["diffusers"] / mean["ldmkit"], 3),
        "parts seconds": parts,  # text (both prompts), sampling (the rest), decode; means
        "image rel diff": rel_err(images["ldmkit"], images["diffusers"]),
        "setup seconds": setup,
        "peak rss gib (this process)": round(peak_rss_gib(), 3),
    }
    return result, single, folder


def measure_rss(library: str, path: Path, args) -> dict:
    """Peak memory of loading `path` and generating one image, in a fresh process."""
    log(f"peak memory: {library} in a fresh process")
    command = [sys.executable, "-m", "benchmarks.sd_speed", "--rss-child", library, str(path),
               "--resolution", str(args.resolution), "--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"the {library} memory child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_child(library: str, path: str, resolution: int) -> None:
    """Runs in the fresh process: load, generate once, print the peak memory as one JSON line."""
    quiet(diffusers=library == "diffusers")
    load, generation = LIBRARIES[library]
    times = {}
    with timed(times, "load"):
        pipe = load(Path(path))
    with timed(times, "generate"):
        generation(pipe, None, RSS_STEPS, resolution)
    print(json.dumps({"peak rss gib": round(peak_rss_gib(), 3), "ru_maxrss gib": round(ru_maxrss_gib(), 3),
                      "seconds": times, "steps": RSS_STEPS, "diffusers imported": "diffusers" in sys.modules,
                      "loaded from": "single file" if Path(path).is_file() else "diffusers folder"}))


def print_table(report: dict) -> None:
    s, settings = report["speed"], report["settings"]
    print(f"\n{MODEL} ({report['size']}), {settings['resolution']}x{settings['resolution']}, {settings['steps']} steps "
          f"dpmpp_2m, guidance {GUIDANCE}, {settings['threads']} threads, {settings['repeats']} round(s)")
    print(f"{'library':<11}{'s/image':>9}{'text':>9}{'sampling':>10}{'decode':>9}{'peak RSS GiB':>14}")
    for library in LIBRARIES:
        p = s["parts seconds"][library]
        print(f"{library:<11}{s['mean seconds'][library]:>9.2f}{p['text']:>9.2f}{p['sampling']:>10.2f}"
              f"{p['decode']:>9.2f}{report['peak rss gib'][library]['peak rss gib']:>14.2f}")
    print(f"diffusers/ldmkit time ratio {s['ratio diffusers/ldmkit']:.3f}; images differ by {s['image rel diff']:.1e} "
          f"(max rel.); this process peaked at {s['peak rss gib (this process)']:.2f} GiB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 512; tiny: 32)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both libraries (default: torch's, all cores)")
    parser.add_argument("--out", default="docs/results/sd-speed.json")
    parser.add_argument("--rss-child", nargs=2, metavar=("LIBRARY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(*args.rss_child, args.resolution)
        return 0
    quiet()
    args.resolution = args.resolution or RESOLUTION[args.size]
    with tempfile.TemporaryDirectory(prefix="ldmkit-sd-speed-") as tmp:
        result, single, folder = speed(args, Path(tmp))
        gc.collect()  # the models are gone with speed()'s frame; the children get the memory
        rss = {"ldmkit": measure_rss("ldmkit", single, args), "diffusers": measure_rss("diffusers", folder, args)}
    report = {
        "benchmark": "sd-speed", "size": args.size, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "settings": {"model": MODEL, "resolution": args.resolution, "steps": args.steps, "guidance": GUIDANCE,
                     "sampler": "dpmpp_2m / DPMSolverMultistepScheduler", "prompt": PROMPT, "repeats": args.repeats,
                     "threads": torch.get_num_threads(), "rss child steps": RSS_STEPS},
        "speed": result,
        "peak rss gib": rss,
        "peak rss note": "each library in a fresh process: 'peak rss gib' is its VmHWM (its own peak); its "
                         "ru_maxrss took over this benchmark's own peak at exec, so it is at least that",
    }
    write_json(report, args.out)
    print_table(report)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
