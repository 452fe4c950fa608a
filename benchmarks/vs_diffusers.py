"""ldmkit against diffusers, part by part, on the same SD v1.5-layout model with the same weights (CPU).

    python -m benchmarks.vs_diffusers [--config small|sd15|tiny] [--threads 2] [--repeats 5] [--warmup 1]
                                      [--batch B] [--generation-batches 1[,4]] [--steps 20]
                                      [--channels-last] [--compile] [--no-rss]
                                      [--out docs/results/vs-diffusers-<config>.json]

How: diffusers builds the model from its config (benchmarks/sd_models.py: seeded random weights;
the time does not depend on them) and saves it as a diffusers folder; diffusers reads the folder
back, ldmkit converts it (ldmkit.io.stable_diffusion.load_diffusers_folder). Timed parts:

    unet forward         batch B latents, 77-token context, timesteps; torch.no_grad for both
    unet training step   the same, train mode: forward, MSE loss, backward, AdamW(lr 1e-4) step,
                         each library's own AdamW (ldmkit's trainers: fused; diffusers' training
                         scripts: torch's default); also images/s and achieved GFLOP/s (below)
    vae encode           batch B images -> the posterior mean; vae decode: latents -> images; no_grad
    generation (batch n) prompt encoding, 20 steps of dpmpp_2m = DPMSolverMultistepScheduler at
                         guidance 7.5, VAE decode; the same prompt and z_T for both; each library
                         under its own no_grad, as a user calls it (as benchmarks/sd_speed.py)

Parity first: before anything is timed both libraries run every part once on the same inputs and
must agree to max |ours - theirs| / max |theirs| <= 1e-3 (UNet output, the training step's loss
and gradients, VAE encode and decode, each generated image); else the script exits with code 1,
timing nothing: a speed comparison of different computations is worthless.

Timing: both libraries run at the same torch thread count (--threads, default 2). Each part is
warmed up (--warmup calls per library; generations at 2 steps), then timed for --repeats rounds,
ldmkit then diffusers within each round (--diffusers-first: the other way), so that a slow spell
of a shared machine hits both; the median of the rounds is reported. ratio = diffusers time /
ldmkit time: > 1 means ldmkit is faster.

GFLOP/s: the FLOPs of one training step (forward + backward; matmuls, convolutions and attention
as torch.utils.flop_counter counts them, CPU attention added: torch leaves it out) counted once,
outside the timed calls, over the median time; next to this machine's float32 matmul rate (a
2048 x 2048 torch.mm, 2 n^3 FLOPs, median of several) at the same thread count.

Peak memory: each library in a fresh process (--rss-child) loads the folder and runs two training
steps, or one generation at 2 steps; the peak resident set (VmHWM: ru_maxrss of a child takes over
its parent's peak at exec, see sd_models.peak_rss_gib; reported too).

Configs (--config):
  tiny   sd_models' "tiny" v1.5 layout, 32 px images, batch 2: checks the script in a minute
         (15 s with --no-rss, which skips the memory children).
  small  sd_models' "small" v1.5 layout: UNet widths (64, 128, 256, 256), two resnets a level,
         8 heads, cross-attention 256 from a 4-layer 256-wide CLIP; VAE widths (32, 64, 128, 128);
         256 px images -> 4 x 32 x 32 latents, batch 4. Every block type, level, attention and
         skip of SD v1.5 is there, at a fifth of SD's widths (35 M UNet parameters, not 860 M)
         and half its latent side, so that the work fits a CPU: a training step is 106 GFLOP
         (2.9 s on one core of a 2-core Xeon, so 1.5-2 s expected on two; --batch 2 halves it),
         while 64-256 channels keep the matmuls and convolutions wide enough to run as kernels
         do at full size rather than measuring per-layer overheads, as the tiny widths would.
  sd15   the real SD v1.5 shapes at 512 px: generation only (minutes per image on a CPU); the
         same code path as small.

ldmkit options (ldmkit only; recorded in the JSON): --channels-last converts ldmkit's UNet and its
inputs to torch.channels_last too (ldmkit's VAE is channels_last by default); --compile wraps
ldmkit's UNet in torch.compile, falling back to eager with a warning when compilation fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.measure import CPU_ATTENTION_FLOPS, alternate, matmul_peak, summarize
from benchmarks.results import write_json
from benchmarks.sd_models import (
    PROMPT,
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
from benchmarks.sd_speed import log
from benchmarks.sides import GUIDANCE, SAMPLER, Diffusers, Ldmkit

MODEL, SEED = "sd-v1.5", 0
TARGET = 1e-3           # max relative difference allowed between the libraries (float32)
LEARNING_RATE = 1e-4    # AdamW, torch's other defaults, for both
WARMUP_STEPS = 2        # a generation warm-up runs every network once; 20 steps would only cost time
RSS_TRAIN_STEPS, RSS_STEPS = 2, 2
NETWORK_PARTS = ("unet forward", "vae encode", "vae decode")
ROOT = Path(__file__).resolve().parent.parent  # the repository root: the memory children run from it with -m
PARTS = (*NETWORK_PARTS, "unet training step", "generation")
LIBRARIES = ("ldmkit", "diffusers")


@dataclass(frozen=True)
class BenchConfig:
    size: str            # sd_models.model_shape's size
    pixels: int          # image side; latents are pixels / the VAE's factor
    batch: int           # UNet forward / training and VAE batch
    parts: tuple         # which of PARTS are timed ("generation" always is)


CONFIGS = {
    "tiny": BenchConfig("tiny", 32, 2, PARTS),  # the tiny VAE halves once: 32 px -> 16 x 16 latents
    "small": BenchConfig("small", 256, 4, PARTS),
    "sd15": BenchConfig("full", 512, 1, ("generation",)),
}


def load_side(library: str, folder: Path, args) -> Ldmkit | Diffusers:
    if library == "diffusers":
        return Diffusers(folder)
    side = Ldmkit(folder, args.channels_last)
    if args.compile:
        x, t, context = unet_example(side.pipe, args)
        side.compile_unet((side.fmt(x), t, context), args.compile_backend)
    return side


def unet_example(pipe, args) -> tuple:
    """A UNet input of the generation's shape (the CFG batch of 2), for the compile check."""
    c, latent = pipe.unet.config, CONFIGS[args.config].pixels // pipe.autoencoder.config.downsampling_factor
    return (torch.randn(2, c.in_channels, latent, latent), torch.tensor([500.0]),
            torch.randn(2, TEXT_LENGTH, c.context_dim))


# ---- inputs and the training step ---------------------------------------------------------------
def latent_size(shape, cfg: BenchConfig) -> int:
    return cfg.pixels // 2 ** (len(shape.vae["block_out_channels"]) - 1)  # the VAE's factor: 8 (tiny: 2)


def make_inputs(shape, cfg: BenchConfig, batch: int, generation_batches, seed: int = 1) -> dict:
    """The same inputs for both libraries: UNet and VAE batches, z_T per generation batch."""
    g, latent = torch.Generator().manual_seed(seed), latent_size(shape, cfg)
    lat = (batch, shape.unet["in_channels"], latent, latent)                   # (B, C, h, w)
    return {
        "x": torch.randn(*lat, generator=g),
        "t": torch.randint(0, 1000, (batch,), generator=g),
        "context": torch.randn(batch, TEXT_LENGTH, shape.context_dim, generator=g),   # (B, L, D)
        "target": torch.randn(*lat, generator=g),                                     # the noise to predict
        "image": torch.rand(batch, 3, cfg.pixels, cfg.pixels, generator=g) * 2 - 1,
        "z": torch.randn(*lat, generator=g),
        "z_T": {n: torch.randn(n, 4, latent, latent, generator=g) for n in generation_batches},
    }


def training_step(side, optimizer, inputs: dict, module=None) -> torch.Tensor:
    """forward, MSE against the target noise, backward, AdamW step; the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.mse_loss(side.unet_output(inputs["x"], inputs["t"], inputs["context"], module), inputs["target"])
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_optimizer(side) -> torch.optim.Optimizer:
    """Each library's own choice: ldmkit's trainers use fused AdamW (ldmkit.train.steps.fused_adam),
    diffusers' training scripts torch's default AdamW (train_text_to_image.py)."""
    if isinstance(side, Ldmkit):
        from ldmkit.train.steps import fused_adam

        return fused_adam(side.eager_unet.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    return torch.optim.AdamW(side.eager_unet.parameters(), lr=LEARNING_RATE)


def loss_and_grads(side, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The training step's loss and every UNet gradient (one vector, by parameter name), no update."""
    side.eager_unet.train()
    try:
        loss = F.mse_loss(side.unet_output(inputs["x"], inputs["t"], inputs["context"]), inputs["target"])
        loss.backward()
        named = sorted(side.eager_unet.named_parameters())  # both libraries use diffusers' names
        grads = torch.cat([p.grad.reshape(-1) for _, p in named])
    finally:
        side.eager_unet.zero_grad(set_to_none=True)
        side.eager_unet.eval()
    return loss.detach(), grads


# ---- parity ---------------------------------------------------------------------------------
def parity(sides: dict, inputs: dict, cfg: BenchConfig, steps: int) -> dict[str, float]:
    """max |ldmkit - diffusers| / max |diffusers| of every computation that is timed."""
    outputs = {}
    for library, side in sides.items():
        out = {}
        with torch.no_grad():
            out["unet forward"] = side.unet_output(inputs["x"], inputs["t"], inputs["context"])
            out["vae encode"] = side.vae_encode(inputs["image"])
            out["vae decode"] = side.vae_decode(inputs["z"])
        if "unet training step" in cfg.parts:
            out["training loss"], out["training gradients"] = loss_and_grads(side, inputs)
        for n, z_T in inputs["z_T"].items():
            out[f"generation (batch {n})"] = side.generate(z_T, steps)
        outputs[library] = out
    return {check: rel_err(outputs["ldmkit"][check], theirs) for check, theirs in outputs["diffusers"].items()}


def require_parity(errors: dict[str, float]) -> bool:
    """Print the checks; False (and a loud message) if any exceeds the target or is NaN."""
    failed = {k: v for k, v in errors.items() if not v <= TARGET}
    for check, value in errors.items():
        print(f"  parity {check:<28}{value:.2e}  {'FAIL' if check in failed else 'ok'}", file=sys.stderr)
    if failed:
        print(f"\nPARITY FAILED: ldmkit and diffusers do not compute the same thing (target {TARGET:.0e}): "
              f"{', '.join(f'{k} {v:.2e}' for k, v in failed.items())}. Nothing was timed.", file=sys.stderr)
    return not failed


# ---- timing -----------------------------------------------------------------------------------
def no_grad_call(fn: Callable, *args) -> Callable:
    def call(warm: bool):
        with torch.no_grad():
            fn(*args)
    return call


def time_networks(sides: dict, inputs: dict, args, names: tuple) -> dict:
    """UNet forward and VAE encode / decode (those in `names`), no_grad."""
    parts = {}
    specs = {"unet forward": lambda s: (s.unet_output, inputs["x"], inputs["t"], inputs["context"]),
             "vae encode": lambda s: (s.vae_encode, inputs["image"]),
             "vae decode": lambda s: (s.vae_decode, inputs["z"])}
    for part in names:
        spec = specs[part]
        log(f"timing {part}")
        parts[part] = summarize(alternate({k: no_grad_call(*spec(s)) for k, s in sides.items()},
                                          args.warmup, args.repeats))
    return parts


def time_generation(sides: dict, inputs: dict, args) -> tuple[dict, dict]:
    """Whole generations per batch size; also how far the last timed images differ."""
    parts, last = {}, {}
    for n, z_T in inputs["z_T"].items():
        log(f"timing generation (batch {n}, {args.steps} steps)")
        images = {}

        # the calls all run within this iteration, so the late binding B023 warns about cannot bite
        def call_for(library, side):
            def call(warm: bool):
                out = side.generate(z_T, WARMUP_STEPS if warm else args.steps)  # noqa: B023
                if not warm:
                    images[library] = out  # noqa: B023
            return call

        part = f"generation (batch {n})"
        parts[part] = summarize(alternate({k: call_for(k, s) for k, s in sides.items()}, args.warmup, args.repeats))
        last[part] = rel_err(images["ldmkit"], images["diffusers"])
    return parts, last


def time_training(sides: dict, inputs: dict, args) -> dict:
    """Training steps (the UNets' weights change: this part runs last), then FLOPs and rates."""
    log("timing unet training step")
    optimizers = {library: make_optimizer(side) for library, side in sides.items()}

    def call_for(library, side):
        return lambda warm: training_step(side, optimizers[library], inputs)

    for side in sides.values():
        side.eager_unet.train()
    part = summarize(alternate({k: call_for(k, s) for k, s in sides.items()}, args.warmup, args.repeats))
    batch = len(inputs["x"])
    part["images/s"] = {k: round(batch / part[k]["median"], 3) for k in sides}
    part["flops"] = {k: count_training_flops(s, optimizers[k], inputs) for k, s in sides.items()}
    part["gflop/s"] = {k: round(part["flops"][k]["total"] / part[k]["median"] / 1e9, 2) for k in sides}
    for side in sides.values():
        side.eager_unet.eval()
    return part


def count_training_flops(side, optimizer, inputs: dict) -> dict:
    """FLOPs of one training step of the eager UNet (a compiled one computes the same), by op."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        training_step(side, optimizer, inputs, module=side.eager_unet)
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": counter.get_total_flops(), "by op": by_op}



# ---- the benchmark ------------------------------------------------------------------------------
def benchmark(args, tmp: Path) -> tuple[dict, Path]:
    """Build, check parity, time; returns (results, diffusers folder). Exits 1 on a parity failure."""
    cfg, shape, setup = CONFIGS[args.config], model_shape(MODEL, CONFIGS[args.config].size), {}
    log(f"building {MODEL} ({cfg.size}) with diffusers")
    with timed(setup, "diffusers: build, save"):
        built, folder = make_reference(shape, tmp, SEED)
        del built  # each side reads the folder itself, as a user would
    with timed(setup, "diffusers: load folder"):
        theirs = load_side("diffusers", folder, args)
    with timed(setup, "ldmkit: convert folder" + (" and compile" if args.compile else "")):
        ours = load_side("ldmkit", folder, args)
    # the order of the calls in every round (--diffusers-first swaps it, to see whether it matters)
    sides = {"diffusers": theirs, "ldmkit": ours} if args.diffusers_first else {"ldmkit": ours, "diffusers": theirs}
    gc.collect()
    inputs = make_inputs(shape, cfg, args.batch, args.generation_batches)

    log("parity checks")
    with timed(setup, "parity checks"):
        errors = parity(sides, inputs, cfg, args.steps)
    if not require_parity(errors):
        sys.exit(1)

    parts = time_networks(sides, inputs, args, tuple(p for p in NETWORK_PARTS if p in cfg.parts))
    generation, last_images = time_generation(sides, inputs, args)
    parts |= generation
    if "unet training step" in cfg.parts:
        parts["unet training step"] = time_training(sides, inputs, args)
    result = {
        "params": {"unet": count_params(theirs.pipe.unet), "vae": count_params(theirs.pipe.vae),
                   "text encoder": count_params(theirs.pipe.text_encoder)},
        "parity": {"target": TARGET, "rel err": errors, "passed": True,
                   "timed images rel err": last_images},  # the last timed round's images, for the record
        "parts": parts,
        "ldmkit options": {"channels_last": args.channels_last, "compile": ours.compile},
        "setup seconds": setup,
        "peak rss gib (this process)": round(peak_rss_gib(), 3),
    }
    return result, folder


def measure_rss(part: str, library: str, folder: Path, args) -> dict:
    """Peak memory of loading the folder and running `part`, in a fresh process."""
    log(f"peak memory: {library} {part} in a fresh process")
    command = [sys.executable, "-m", "benchmarks.vs_diffusers", "--rss-child", part, library, str(folder),
               "--config", args.config, "--threads", str(args.threads), "--batch", str(args.batch)]
    command += ["--channels-last"] * args.channels_last
    command += ["--compile", "--compile-backend", args.compile_backend] * args.compile
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"the {library} {part} memory child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_child(part: str, library: str, folder: str, args) -> None:
    """Runs in the fresh process: load, run the part, print the peak memory as one JSON line."""
    quiet(diffusers=library == "diffusers")
    cfg, times = CONFIGS[args.config], {}
    with timed(times, "load"):
        side = load_side(library, Path(folder), args)
    inputs = make_inputs(model_shape(MODEL, cfg.size), cfg, args.batch, (1,))
    with timed(times, part):
        if part == "training":
            side.eager_unet.train()
            optimizer = make_optimizer(side)
            for _ in range(RSS_TRAIN_STEPS):
                training_step(side, optimizer, inputs)
        else:
            side.generate(inputs["z_T"][1], RSS_STEPS)
    print(json.dumps({"peak rss gib": round(peak_rss_gib(), 3), "ru_maxrss gib": round(ru_maxrss_gib(), 3),
                      "seconds": times, "steps": RSS_TRAIN_STEPS if part == "training" else RSS_STEPS,
                      "diffusers imported": "diffusers" in sys.modules}))


def print_table(report: dict) -> None:
    s, parts = report["settings"], report["results"]["parts"]
    print(f"\n{MODEL} layout, config {report['config']}: {s['pixels']} px, batch {s['batch']}, {s['threads']} threads, "
          f"median of {s['repeats']}; ldmkit options {json.dumps(s['ldmkit options'])}")
    print("ratio = diffusers time / ldmkit time (> 1: ldmkit faster)")
    print(f"{'part':<26}{'ldmkit s':>11}{'diffusers s':>13}{'ratio':>8}")
    for part, p in parts.items():
        print(f"{part:<26}{p['ldmkit']['median']:>11.4f}{p['diffusers']['median']:>13.4f}"
              f"{p['ratio diffusers/ldmkit']:>8.3f}")
    if "unet training step" in parts:
        p = parts["unet training step"]
        print(f"{'training images/s':<26}{p['images/s']['ldmkit']:>11.2f}{p['images/s']['diffusers']:>13.2f}")
        flops = [p["flops"][library]["total"] / 1e9 for library in LIBRARIES]
        print(f"{'training GFLOP/s':<26}{p['gflop/s']['ldmkit']:>11.2f}{p['gflop/s']['diffusers']:>13.2f}"
              f"   (GFLOP per step {flops[0]:.2f} / {flops[1]:.2f})")
        print(f"{'  / matmul peak':<26}{p['fraction of matmul peak']['ldmkit']:>11.3f}"
              f"{p['fraction of matmul peak']['diffusers']:>13.3f}")
    m = report["matmul peak"]
    print(f"{'matmul peak GFLOP/s':<26}{m['gflop/s']:>11.2f}   ({m['n']}x{m['n']} torch.mm, float32)")
    for part, rss in report["peak rss gib"].items():
        print(f"{'peak RSS GiB ' + part:<26}{rss['ldmkit']['peak rss gib']:>11.3f}"
              f"{rss['diffusers']['peak rss gib']:>13.3f}")
    worst = max(report["results"]["parity"]["rel err"].values())
    print(f"parity: all checks within {TARGET:.0e} (worst {worst:.1e})")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=tuple(CONFIGS), default="small")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both libraries")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per part (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per library before each part")
    parser.add_argument("--batch", type=int, default=None, help="UNet / VAE batch (default: the config's)")
    parser.add_argument("--generation-batches", default="1", help="comma-separated generation batch sizes")
    parser.add_argument("--steps", type=int, default=20, help="generation steps")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmul peak")
    parser.add_argument("--channels-last", action="store_true", help="ldmkit: channels_last UNet and inputs too")
    parser.add_argument("--compile", action="store_true", help="ldmkit: torch.compile the UNet")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend ('eager': dynamo without inductor, to check the plumbing)")
    parser.add_argument("--diffusers-first", action="store_true", help="call diffusers first in every round")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--out", default=None, help="default docs/results/vs-diffusers-<config>.json")
    parser.add_argument("--rss-child", nargs=3, metavar=("PART", "LIBRARY", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch = args.batch or CONFIGS[args.config].batch
    args.generation_batches = tuple(int(n) for n in args.generation_batches.split(","))
    args.out = args.out or f"docs/results/vs-diffusers-{args.config}.json"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(*args.rss_child, args)
        return 0
    quiet()
    start = time.perf_counter()
    log(f"matmul peak ({args.matmul_size} x {args.matmul_size})")
    peak = matmul_peak(args.matmul_size, max(args.repeats, 5))
    with tempfile.TemporaryDirectory(prefix="ldmkit-vs-diffusers-") as tmp:
        result, folder = benchmark(args, Path(tmp))
        gc.collect()  # the models are gone with benchmark()'s frame; the children get the memory
        rss_parts = ("training",) * ("unet training step" in CONFIGS[args.config].parts) + ("generation",)
        rss = {} if args.no_rss else {
            part: {library: measure_rss(part, library, folder, args) for library in LIBRARIES} for part in rss_parts}
    cfg, training = CONFIGS[args.config], result["parts"].get("unet training step")
    if training:
        training["fraction of matmul peak"] = {k: round(v / peak["gflop/s"], 3) for k, v in training["gflop/s"].items()}
    report = {
        "benchmark": "vs-diffusers", "config": args.config, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),  # torch, diffusers and transformers versions too
        "settings": {
            "model": MODEL, "size": cfg.size, "pixels": cfg.pixels,
            "latent": latent_size(model_shape(MODEL, cfg.size), cfg),
            "batch": args.batch, "generation batches": list(args.generation_batches), "steps": args.steps,
            "guidance": GUIDANCE, "sampler": f"{SAMPLER} / DPMSolverMultistepScheduler", "prompt": PROMPT,
            "threads": torch.get_num_threads(), "repeats": args.repeats, "warmup": args.warmup,
            "warmup generation steps": WARMUP_STEPS,
            "first in each round": "diffusers" if args.diffusers_first else "ldmkit",
            "optimizer": f"AdamW(lr={LEARNING_RATE}, weight_decay=0.01): ldmkit fused, diffusers torch's default",
            "ldmkit options": result["ldmkit options"], "timed parts": list(cfg.parts),
        },
        "ratio convention": "diffusers time / ldmkit time: > 1 means ldmkit is faster",
        "results": result,
        "matmul peak": peak,
        "peak rss gib": rss,
        "peak rss note": f"each library in a fresh process: load the folder, then {RSS_TRAIN_STEPS} training steps "
                         f"or one generation at {RSS_STEPS} steps; 'peak rss gib' is its VmHWM (its own peak), its "
                         "ru_maxrss took over this benchmark's peak at exec, so it is at least that",
        "total seconds": round(time.perf_counter() - start, 1),
    }
    write_json(report, args.out)
    print_table(report)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
