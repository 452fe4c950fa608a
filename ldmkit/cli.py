"""The `ldmkit` command: it parses arguments and calls the Python API, nothing more."""

from __future__ import annotations

import argparse
import sys


def _forward_demo(args: argparse.Namespace) -> None:
    from .demos import forward_diffusion_strip

    path = forward_diffusion_strip(args.out, photo=args.photo, size=args.size, seed=args.seed)
    print(f"wrote {path}: q(x_t | x_0) of '{args.photo}' over t for the linear, scaled-linear and cosine schedules")


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes key=value (e.g. model.base_channels=64), got {pair!r}")
        overrides[key] = value
    return overrides


def _train_autoencoder(args: argparse.Namespace) -> None:
    from .config import apply_overrides
    from .train.autoencoder import train_autoencoder
    from .train.autoencoder_config import TRAIN_PRESETS

    if args.preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(TRAIN_PRESETS)}")
    overrides = _parse_sets(args.set)
    if args.steps is not None:
        overrides["steps"] = str(args.steps)
    config = apply_overrides(TRAIN_PRESETS[args.preset], overrides)
    metrics = train_autoencoder(config, args.out, device=args.device, resume=not args.no_resume)
    print(f"done: {args.out}/model; held-out " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldmkit", description="Latent diffusion in plain PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("forward-demo", help="show the forward diffusion of a real photo")
    demo.add_argument("--out", default="outputs/forward_diffusion.png", help="PNG to write")
    demo.add_argument("--photo", default="astronaut", help="astronaut | coffee | chelsea | rocket")
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_forward_demo)

    ae = commands.add_parser("train-autoencoder", help="train a first-stage autoencoder (AE, KL, VQ, +GAN)")
    ae.add_argument("--preset", default="fmnist-kl-f4", help="fmnist-kl-f4 | fmnist-vq-f4 | photos-kl-f4 | tiny")
    ae.add_argument("--out", required=True, help="run folder: log, plots, checkpoints, final model")
    ae.add_argument("--steps", type=int, default=None)
    ae.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set model.kind=vq --set loss.gan_weight=0.1")
    ae.add_argument("--device", default="cpu")
    ae.add_argument("--no-resume", action="store_true", help="start afresh even if the folder has checkpoints")
    ae.set_defaults(run=_train_autoencoder)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        print(f"ldmkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
