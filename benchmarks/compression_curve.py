"""The LDM compression study's curves (Rombach et al. 2022, figs. 6 and 7) on Fashion-MNIST: FD
against training progress for every first-stage factor f, and FD against sampling throughput.

    python -m benchmarks.compression_curve [--runs runs/study] [--per-class 100] [--guidance 1.5]
        [--steps 20] [--threads 1] [--out docs/results/compression-curve.json]
        [--plot docs/images/compression-curve.png]

Every checkpoint of the study's runs (`RUN/checkpoints/step-N`, and `RUN/model` at the end) is
scored as `ldmkit evaluate --size 100 --guidance 1.5` scores a model: 1,000 images (100 a class
prompt), 20 DPM-Solver++(2M) steps, FD on the shipped classifier's features against the 10,000
test images, FD_inf, class agreement, seconds per image batched. A run that continues another
(`init_from`) is placed after it: its steps and training minutes are added to the one it
started from. Training minutes come from each run's log.jsonl (images per second over each
logged interval), so they are the wall-clock of that run on that machine, shared or not; the
steps are exact. A point already in --out is not scored again, so the command resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ldmkit.apps.evaluate import evaluate, load_for_evaluation

from .results import write_json
from .sd_models import cpu_name

# the study's runs, each continuing the one before it (init_from): f = 2 was continued four times
# (a cosine learning rate each time, docs/compression.md)
SERIES: dict[str, list[str]] = {
    "f = 1 (pixels)": ["ldm-f1"],
    "f = 2": ["ldm-f2", "ldm-f2b", "ldm-f2c", "ldm-f2d", "ldm-f2e"],
    "f = 8": ["ldm-f8"],
}
# runs no longer on disk that a series continues: (steps, training minutes on one thread)
FINISHED = {"ldm-f2": (7000, 118.1)}
# points scored before this command existed (ldmkit evaluate --guidance 1.5 --size 100), by series
EARLIER = {
    "f = 2": [(7000, 118.1, "docs/results/compression-ldm-f2-1000.json"),
              (13000, None, "docs/results/compression-ldm-f2-13000steps-1000.json")],
    "f = 4": [(7000, None, "docs/results/compression-ldm-f4-gan-decoder-1000.json")],
}


def training_minutes(run: Path) -> dict[int, float]:
    """Minutes of training up to each logged step, from the run's log (images/s over each interval)."""
    found = sorted((run / "checkpoints").glob("step-*/config.json"))
    batch = json.loads(found[0].read_text())["train"]["batch_size"] if found else 64
    rates: dict[int, float] = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "images_per_s" in entry:
            rates[entry["step"]] = entry["images_per_s"]  # a resumed run logs a step again: the last wins
    minutes, total, previous = {}, 0.0, 0
    for step in sorted(rates):
        total += (step - previous) * batch / rates[step] / 60
        minutes[step], previous = total, step
    return minutes


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = [(int(p.name.split("-")[1]), p) for p in sorted((run / "checkpoints").glob("step-*"))]
    if (run / "model").is_dir():
        final = json.loads((run / "model" / "config.json").read_text()).get("training", {}).get("steps")
        found = [(s, p) for s, p in found if s != final] + ([(final, run / "model")] if final else [])
    return sorted(found)


def minutes_at(minutes: dict[int, float], step: int) -> float | None:
    logged = [s for s in minutes if s <= step]
    return minutes[max(logged)] if logged else None


def series_points(name: str, runs_dir: Path, every: int) -> list[dict]:
    """The points of one series: (run, folder, step in the series, training minutes in the series),
    at every `every` steps of the series and at the end of each run."""
    points, base_steps, base_minutes = [], 0, 0.0  # where the run before this one ended
    for run in SERIES.get(name, []):
        folder = runs_dir / run
        if run in FINISHED:
            base_steps, base_minutes = FINISHED[run]
            continue
        if not (folder / "log.jsonl").exists():
            break
        minutes = training_minutes(folder)
        for step, path in checkpoints(folder):
            if (base_steps + step) % every and path.name != "model":
                continue
            at = minutes_at(minutes, step)
            points.append({"series": name, "run": run, "folder": str(path), "step": base_steps + step,
                           "train_minutes": None if at is None else base_minutes + at})
        if minutes:
            base_steps, base_minutes = base_steps + max(minutes), base_minutes + minutes[max(minutes)]
    return points


def earlier_points(guidance: float) -> list[dict]:
    points = []
    for name, rows in EARLIER.items():
        for step, minutes, path in rows:
            if not Path(path).exists():
                continue
            found = json.loads(Path(path).read_text())
            for row in found if isinstance(found, list) else [found]:  # one guidance: one row
                if row["settings"]["guidance"] == guidance and row["images"] == 1000:
                    points.append({"series": name, "run": None, "folder": path, "step": step,
                                   "train_minutes": minutes, **scores(row)})
    return points


def scores(result: dict) -> dict:
    keys = ("frechet_distance", "frechet_floor", "frechet_first_stage", "fd_inf", "fd_inf_halves",
            "class_agreement", "seconds_per_image_batched")
    return {k: result.get(k) for k in keys}


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_steps, by_minutes, by_speed) = plt.subplots(1, 3, figsize=(16, 4.2))
    names = sorted({p["series"] for p in results["points"]})
    for name, marker in zip(names, "osD^v"):
        row = sorted((p for p in results["points"] if p["series"] == name), key=lambda p: p["step"])
        by_steps.plot([p["step"] for p in row], [p["frechet_distance"] for p in row], marker=marker, label=name)
        timed = [p for p in row if p["train_minutes"] is not None]  # a point whose run's log is gone has none
        by_minutes.plot([p["train_minutes"] for p in timed], [p["frechet_distance"] for p in timed], marker=marker,
                        label=name)
        last = row[-1]
        by_speed.plot([1 / last["seconds_per_image_batched"]], [last["frechet_distance"]], marker=marker,
                      linestyle="", markersize=9, label=f"{name}, {last['step']:,} steps")
    for ax in (by_steps, by_minutes, by_speed):
        ax.axhline(results["floor"], color="grey", linestyle=":", label="real images (floor)")
        ax.set_yscale("log")
        ax.set_ylabel(f"FD ({results['settings']['images']} images, guidance {results['settings']['guidance']})")
        ax.legend(fontsize=8)
    by_steps.set_xlabel("training steps (batch 64)")
    by_steps.set_title("FD against training progress (LDM fig. 6)", fontsize=10)
    by_minutes.set_xscale("log")
    by_minutes.set_xlabel("training minutes, one CPU thread (the compute budget)")
    by_minutes.set_title("FD against training compute", fontsize=10)
    by_speed.set_xscale("log")
    by_speed.set_xlabel(f"images / s, batched, {results['settings']['threads']} thread(s)")
    by_speed.set_title("FD against sampling throughput (LDM fig. 7)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/study"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--every", type=int, default=2000, help="score a checkpoint every N steps of a series")
    parser.add_argument("--series", nargs="+", default=list(SERIES), help="which series to score")
    parser.add_argument("--out", type=Path, default=Path("docs/results/compression-curve.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/images/compression-curve.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {"images": 10 * args.per_class, "guidance": args.guidance, "steps": args.steps,
                "sampler": "dpmpp_2m", "seed": 0, "threads": args.threads}
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if results.get("settings") != settings:
        results = {"settings": settings, "cpu": cpu_name(), "floor": None, "points": []}
    done = {(p["series"], p["step"]) for p in results["points"]}
    results["points"] += [p for p in earlier_points(args.guidance) if (p["series"], p["step"]) not in done]
    done = {(p["series"], p["step"]) for p in results["points"]}
    for name in args.series:
        for point in series_points(name, args.runs, args.every):
            if (name, point["step"]) in done:
                continue
            if not Path(point["folder"]).is_dir():  # a running trainer replaced that checkpoint
                print(f"{name}: step {point['step']:,} is gone ({point['folder']}); skipped", flush=True)
                continue
            print(f"{name}: step {point['step']:,} ({point['folder']})", flush=True)
            pipe = load_for_evaluation(point["folder"])
            result = evaluate(pipe, size=args.per_class, steps=args.steps, sampler="dpmpp_2m",
                              guidance=args.guidance)
            results["points"].append({**point, **scores(result)})
            done.add((name, point["step"]))
            results["floor"] = result["frechet_floor"]
            write_json(results, args.out, indent=1)
    results["points"].sort(key=lambda p: (p["series"], p["step"]))
    write_json(results, args.out, indent=1)
    if results["points"] and results["floor"] is not None:
        print(f"wrote {args.out} and {plot(results, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
