"""Speed on CPU against the engines users pick: ldmkit (default and fast), diffusers, OpenVINO and
stable-diffusion.cpp, side by side on the same SD v1.5-layout weights, in one run.

    python -m benchmarks.cpu_engines [--config sd15|small|sd15-128|tiny] [--threads N] [--repeats 3]
        [--engines ldmkit diffusers ...] [--settings dpm20 lcm4] [--in-process]
        [--out docs/results/cpu-engines-<config>.json]

The model: benchmarks/sd_models.py builds SD v1.5 with diffusers (seeded random weights: the time
does not depend on them) and saves it as a diffusers folder; every engine loads that folder.

Settings (benchmarks/engines.py): "dpm20", 20 steps of DPM-Solver++(2M) at guidance 7.5 (ldmkit
dpmpp_2m, diffusers DPMSolverMultistepScheduler, stable-diffusion.cpp dpm++2m with its discrete
schedule); "lcm4", LCM's 4 steps at guidance 1 (one UNet call a step) on the same network: the
cost of an LCM-LoRA merged into SD v1.5 (ldmkit lcm, diffusers LCMScheduler, stable-diffusion.cpp
lcm). Every engine has an LCM sampler, so no row is left out for want of one.

Method: each (engine, setting) runs in a fresh process (--in-process: in this one, for tests;
no memory figures then), one after another: load the folder (seconds), one whole generation as
the warm-up (the "first call": it includes any compilation), then --repeats generations, of which
the median is reported, and the process's peak resident memory (VmHWM). The machine's load
average is recorded before each process: rows measured under different load do not compare.
OpenVINO's conversion of diffusers' UNet and VAE decoder to IR runs once, in its own process
(seconds and peak memory recorded); its rows read the IR and compile it (load).

Parity: each image is compared with ldmkit's default (float32) image of the same setting: max
|difference| and PSNR on [0, 1] pixels. ldmkit, diffusers and OpenVINO start from the same z_T and
LCM noise; stable-diffusion.cpp uses its own RNG and tokenizer, so its image is only shown to exist.

Configs (--config):
  sd15      SD v1.5's networks (860 M UNet), 512 x 512: the figures of docs/benchmarks.md
  small     sd_models' "small" SD v1.5 layout (CPU widths, 35 M UNet), 256 x 256: a quick run.
            stable-diffusion.cpp builds SD v1.5's own widths only, so it cannot load this model
  sd15-128  SD v1.5's networks at 128 x 128: every engine, stable-diffusion.cpp included, in minutes
  tiny      the tests' tiny layout, 32 x 32: checks the machinery in seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.engines import (
    SETTINGS,
    Run,
    convert_openvino,
    has_fast,
    load_engine,
    save_taesd,
    sdcpp_folder,
    taesd_folder,
    versions,
)
from benchmarks.results import write_json
from benchmarks.sd_models import (
    PROMPT,
    build_diffusers,
    machine,
    model_shape,
    peak_rss_gib,
    quiet,
    save_reference,
)

MODEL, SEED = "sd-v1.5", 0
ENGINES = ("ldmkit", "ldmkit-fast", "ldmkit-compile", "ldmkit-compile-f32", "ldmkit-compile-tiny", "diffusers",
           "openvino-f32", "openvino-default", "sdcpp-f32", "sdcpp-f16")
REFERENCE = "ldmkit"  # parity is against ldmkit's float32 image
ROOT = Path(__file__).resolve().parent.parent  # the repository root: the children run from it with -m
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class EngineConfig:
    size: str     # sd_models.model_shape's size
    pixels: int   # image side


CONFIGS = {
    "sd15": EngineConfig("full", 512),
    "small": EngineConfig("small", 256),
    "sd15-128": EngineConfig("full", 128),
    "tiny": EngineConfig("tiny", 32),  # the tiny VAE halves once: 32 px -> 16 x 16 latents
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def latent_side(shape, pixels: int) -> int:
    return pixels // 2 ** (len(shape.vae["block_out_channels"]) - 1)  # the VAE's factor: 8 (tiny: 2)


def cpu_flags() -> list[str]:
    """Which of the instruction sets that decide these engines' kernels this CPU has."""
    info = Path("/proc/cpuinfo")
    lines = [line for line in info.read_text().splitlines() if line.startswith("flags")] if info.is_file() else []
    present = set(lines[0].split(":", 1)[1].split()) if lines else set()
    return [flag for flag in CPU_FLAGS if flag in present]


def skip_reason(engine: str, config: str) -> str | None:
    """Why a row cannot run here, or None."""
    if engine.startswith("ldmkit-") and not has_fast():
        return "Pipeline.from_pretrained has no fast= keyword in this ldmkit"
    if engine.startswith(("openvino-", "ldmkit-compile")):
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (pip install '.[bench]')"
    if engine.startswith("sdcpp-"):
        if CONFIGS[config].size != "full":
            return ("stable-diffusion.cpp builds SD v1.5's own widths (320-1280 channels, 768-d CLIP with 49408 "
                    "tokens), so it cannot load this smaller model; run --config sd15 or sd15-128")
        try:
            import stable_diffusion_cpp  # noqa: F401
        except ImportError:
            return "stable-diffusion-cpp-python is not installed (scripts/setup_bench.sh)"
    return None


# ---- one engine, one setting: the child process ------------------------------------------------------
def measure(run: Run, repeats: int, image_path: str) -> dict:
    """Load, the first call, `repeats` timed calls; saves the last image (float32 npy)."""
    torch.set_num_threads(run.threads)
    start = time.perf_counter()
    generate, options = load_engine(run)
    load = time.perf_counter() - start
    start = time.perf_counter()
    generate()
    first = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        image = generate()
        seconds.append(round(time.perf_counter() - start, 3))
    np.save(image_path, image.detach().float().numpy())
    return {"load s": round(load, 3), "first call s": round(first, 3), "seconds": seconds,
            "median s": round(statistics.median(seconds), 3), "options": options}


def child_main(spec: str) -> None:
    """In the fresh process: measure, print one JSON line with this process's peak memory."""
    quiet()
    job = json.loads(spec)
    if job["kind"] == "convert":
        torch.set_num_threads(job["threads"])
        result = convert_openvino(job["folder"], job["ir_dir"], job["latent"])
    else:
        result = measure(Run(**job["run"]), job["repeats"], job["image"])
    print(json.dumps({**result, "peak rss gib": round(peak_rss_gib(), 3)}))


def in_child(job: dict, threads: int) -> dict:
    """Run `job` in a fresh interpreter; raises with its stderr tail if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.cpu_engines", "--child", json.dumps(job)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-2000:] or f"exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_row(run: Run, args, tmp: Path) -> dict:
    """One row: measured in a child (or here with --in-process); failures become the row's note."""
    image = tmp / f"{run.engine}-{run.setting}.npy"
    row = {"engine": run.engine, "setting": run.setting, "load average": list(os.getloadavg())}
    try:
        if args.in_process:
            row |= measure(run, args.repeats, str(image)) | {"peak rss gib": None}
        else:
            row |= in_child({"kind": "run", "run": asdict(run), "repeats": args.repeats, "image": str(image)},
                            run.threads)
        row["status"], row["image"] = "ok", str(image)
    except Exception as error:  # noqa: BLE001 (a row that fails is reported, the others still run)
        row |= {"status": "failed", "note": f"{type(error).__name__}: {error}"}
        log(f"{run.engine} {run.setting} FAILED: {str(error)[-500:]}")
    gc.collect()
    return row


def convert_row(folder: Path, ir_dir: Path, latent: int, args) -> dict:
    """OpenVINO's one-off conversion to IR, in its own process (here with --in-process)."""
    job = {"kind": "convert", "folder": str(folder), "ir_dir": str(ir_dir), "latent": latent, "threads": args.threads}
    try:
        if args.in_process:
            return {"status": "ok", **convert_openvino(str(folder), str(ir_dir), latent), "peak rss gib": None}
        return {"status": "ok", **in_child(job, args.threads)}
    except Exception as error:  # noqa: BLE001
        log(f"OpenVINO conversion FAILED: {str(error)[-500:]}")
        return {"status": "failed", "note": f"{type(error).__name__}: {error}"}


# ---- parity and the report -----------------------------------------------------------------------------
def parity(image: np.ndarray, reference: np.ndarray) -> dict:
    """max |image - reference| and PSNR (dB) on [0, 1] pixels."""
    diff = np.abs(image.astype(np.float64) - reference.astype(np.float64))
    mse = float((diff**2).mean())
    return {"max abs diff": float(diff.max()), "psnr db": round(10 * math.log10(1 / mse), 2) if mse > 0 else math.inf}


def add_parity(rows: list[dict]) -> None:
    """Each row's image against ldmkit's of the same setting; stable-diffusion.cpp: that it ran."""
    images = {(r["engine"], r["setting"]): np.load(r["image"]) for r in rows if r.get("status") == "ok"}
    for row in rows:
        key, reference = (row["engine"], row["setting"]), images.get((REFERENCE, row["setting"]))
        if key not in images:
            continue
        image = images[key]
        row["image stats"] = {"shape": list(image.shape), "mean": round(float(image.mean()), 4),
                              "std": round(float(image.std()), 4), "finite": bool(np.isfinite(image).all())}
        if row["engine"].startswith("sdcpp-"):
            row["parity"] = None
            row["parity note"] = "own RNG and CLIP tokenizer: another image; it ran (see image stats)"
        elif row["engine"].endswith("-tiny"):
            row["parity"] = None
            row["parity note"] = "a TAESD with random weights decodes: another image; only its time counts"
        elif reference is not None and row["engine"] != REFERENCE:
            row["parity"] = parity(image, reference)


def print_table(report: dict) -> None:
    m, s = report["machine"], report["settings"]
    print(f"\n{MODEL} ({report['config']}), {s['pixels']} x {s['pixels']}, {m['threads']} thread(s), "
          f"{s['repeats']} repeat(s); {m['cpu']} [{' '.join(m['cpu flags'])}]")
    print(f"{'setting':<9}{'engine':<18}{'s/image':>9}{'first call':>11}{'load s':>8}{'peak GiB':>9}"
          f"{'max|diff|':>11}{'PSNR dB':>9}  status")
    for r in report["rows"]:
        def num(key, width, fmt, src=r):
            return format(src[key], f"{width}{fmt}") if src.get(key) is not None else " " * (width - 1) + "-"
        p = r.get("parity") or {}
        note = r.get("note", r.get("parity note", ""))
        print(f"{r['setting']:<9}{r['engine']:<18}{num('median s', 9, '.2f')}{num('first call s', 11, '.2f')}"
              f"{num('load s', 8, '.1f')}{num('peak rss gib', 9, '.2f')}{num('max abs diff', 11, '.1e', p)}"
              f"{num('psnr db', 9, '.1f', p)}  {r['status']}{': ' + note[:90] if note else ''}")
    conv = report.get("openvino conversion")
    if conv:
        print(f"OpenVINO conversion to IR: {conv.get('convert seconds', conv.get('note'))}, "
              f"peak {conv.get('peak rss gib')} GiB")


def build_folder(config: str, tmp: Path) -> tuple[Path, int]:
    """The diffusers folder every engine loads, and the latent side."""
    shape = model_shape(MODEL, CONFIGS[config].size)
    log(f"building {MODEL} ({shape.name}, {CONFIGS[config].size}) with diffusers")
    pipe = build_diffusers(shape, tmp / "stand-in-tokenizer", SEED)
    folder = save_reference(pipe, tmp / "model", shape.version)
    del pipe
    gc.collect()
    return folder, latent_side(shape, CONFIGS[config].pixels)


def benchmark(args, tmp: Path) -> dict:
    folder, latent = build_folder(args.config, tmp)
    pixels = CONFIGS[args.config].pixels
    rows, conversion = [], None
    for setting in args.settings:
        for engine in args.engines:
            reason = skip_reason(engine, args.config)
            if reason is not None:
                rows.append({"engine": engine, "setting": setting, "status": "skipped", "note": reason})
                continue
            if engine.startswith("openvino-") and conversion is None:
                log("converting the UNet and VAE decoder to OpenVINO IR")
                conversion = convert_row(folder, tmp / "openvino-ir", latent, args)
            if engine.startswith("openvino-") and conversion["status"] != "ok":
                rows.append({"engine": engine, "setting": setting, "status": "skipped",
                             "note": "the OpenVINO conversion failed: " + conversion["note"][-300:]})
                continue
            if engine == "ldmkit-compile-tiny" and not taesd_folder(folder).is_dir():
                save_taesd(folder)
            if engine.startswith("sdcpp-"):
                sdcpp_folder(folder)  # its renamed copy, made here so that no row's load time holds it
            log(f"{setting}: {engine}")
            run = Run(engine, setting, str(folder), pixels, latent, args.threads, str(tmp / "openvino-ir"))
            rows.append(run_row(run, args, tmp))
    add_parity(rows)
    for row in rows:
        row.pop("image", None)
    return {
        "benchmark": "cpu-engines", "config": args.config, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "threads": args.threads, "cpu flags": cpu_flags(), **versions(),
                    "load average at start": args.load_at_start},
        "settings": {"model": MODEL, "pixels": pixels, "latent": latent, "prompt": PROMPT, "negative prompt": "",
                     "seed": SEED, "repeats": args.repeats, "fresh process per row": not args.in_process,
                     "settings": {name: asdict(SETTINGS[name]) for name in args.settings}},
        "rows": rows,
        "openvino conversion": conversion,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=tuple(CONFIGS), default="sd15")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="every engine's thread count")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations after the warm-up")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--in-process", action="store_true", help="no fresh process per row (tests): no memory")
    parser.add_argument("--out", default=None, help="default docs/results/cpu-engines-<config>.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    quiet()
    if REFERENCE not in args.engines:
        args.engines = [REFERENCE, *args.engines]  # parity needs it
    args.load_at_start = list(os.getloadavg())
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ldmkit-cpu-engines-") as tmp:
        report = benchmark(args, Path(tmp))
    out = write_json(report, args.out or f"docs/results/cpu-engines-{args.config}.json")
    print_table(report)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
