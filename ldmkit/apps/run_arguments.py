"""What every training command shares: its arguments (a preset, a run folder, overrides, device,
resume) and the config they make."""

from __future__ import annotations

import argparse


def run_config(presets: dict, args: argparse.Namespace):
    """The named preset with --steps and every --set applied."""
    from ..config import apply_overrides, parse_sets

    if args.preset not in presets:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(presets)}")
    overrides = parse_sets(args.set)
    if args.steps is not None:
        overrides["steps"] = str(args.steps)
    return apply_overrides(presets[args.preset], overrides)


def add_run_arguments(parser: argparse.ArgumentParser, presets: dict, default: str | None, example: str) -> None:
    """What every training command takes: a preset, a run folder, overrides, device, resume."""
    parser.add_argument("--preset", default=default, help=" | ".join(presets))
    parser.add_argument("--out", required=True, help="run folder: log, plots, samples, checkpoints, final model")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. {example}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if the folder has checkpoints")
