"""`ldmkit train-dalle`: a miniature DALL-E (ldmkit.train.dalle) from the command line. The lead
wires it in with `register(commands)` on the subparsers of ldmkit/apps/cli.py."""

from __future__ import annotations

import argparse


def _train_dalle(args: argparse.Namespace) -> None:
    from ..config import apply_overrides, parse_sets
    from ..train.dalle import train_dalle
    from ..train.dalle_config import DALLE_PRESETS

    if args.preset not in DALLE_PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(DALLE_PRESETS)}")
    overrides = parse_sets(args.set)
    if args.steps is not None:
        overrides["steps"] = str(args.steps)
    config = apply_overrides(DALLE_PRESETS[args.preset], overrides)
    summary = train_dalle(config, args.out, device=args.device, resume=not args.no_resume)
    losses = ", ".join(f"{k}={summary[k]:.3f}" for k in ("eval_text_loss", "eval_image_loss") if k in summary)
    print(f"done: {summary.get('saved', args.out)} ({summary['steps']} steps, {summary['train_minutes']:.1f} min; "
          f"held-out {losses})")


def register(commands) -> None:
    """Add `train-dalle` to the subparsers `commands` (the same arguments as every training command)."""
    from ..train.dalle_config import DALLE_PRESETS

    parser = commands.add_parser("train-dalle", help="train a miniature DALL-E: a transformer over caption "
                                                     "tokens and VQ codes")
    parser.add_argument("--preset", default="fashion-mnist", help=" | ".join(DALLE_PRESETS))
    parser.add_argument("--out", required=True, help="run folder: log, plots, samples, checkpoints, final model")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set width=128 --set batch_size=32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if the folder has checkpoints")
    parser.set_defaults(run=_train_dalle)
