"""The `ldmkit` command: it parses arguments and calls the Python API, nothing more."""

from __future__ import annotations

import argparse
import sys


def _forward_demo(args: argparse.Namespace) -> None:
    from .demos import forward_diffusion_strip

    path = forward_diffusion_strip(args.out, photo=args.photo, size=args.size, seed=args.seed)
    print(f"wrote {path}: q(x_t | x_0) of '{args.photo}' over t for the linear, scaled-linear and cosine schedules")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldmkit", description="Latent diffusion in plain PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("forward-demo", help="show the forward diffusion of a real photo")
    demo.add_argument("--out", default="outputs/forward_diffusion.png", help="PNG to write")
    demo.add_argument("--photo", default="astronaut", help="astronaut | coffee | chelsea | rocket")
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_forward_demo)
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
