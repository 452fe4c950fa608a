"""unCLIP's commands (ldmkit.family.unclip): `ldmkit make-unclip` assembles an unCLIP folder from a prior
and a decoder, `ldmkit variations` decodes images' CLIP embeddings anew; `ldmkit generate --model
FOLDER` makes images of prompts with one (its settings: add_unclip_arguments)."""

from __future__ import annotations

import argparse


def add_unclip_arguments(parser) -> None:
    """The prior's settings, which only unCLIP folders take (`ldmkit generate`, `ldmkit make-unclip`)."""
    parser.add_argument("--prior-guidance", type=float, default=None,
                        help="unCLIP: the prior's classifier-free guidance (default: the folder's)")
    parser.add_argument("--prior-steps", type=int, default=None, help="unCLIP: the prior's DDIM steps")
    _add_decoder_guidance(parser)


def _add_decoder_guidance(parser) -> None:
    parser.add_argument("--decoder-guidance", type=float, default=None,
                        help="unCLIP: the decoder's classifier-free guidance (--steps, --sampler: its steps, sampler)")


def _make_unclip(args: argparse.Namespace) -> None:
    from ..family.unclip import save_unclip

    sampling = {name: getattr(args, name) for name in ("prior_steps", "prior_guidance", "steps", "sampler",
                                                       "decoder_guidance")}
    folder = save_unclip(args.out, args.prior, args.decoder, sampling=sampling)
    print(f"wrote {folder / 'config.json'}: prior {args.prior}, decoder {args.decoder}")


def _variations(args: argparse.Namespace) -> None:
    from .generate import variations_to_folder

    settings = {name: getattr(args, name) for name in ("steps", "sampler", "decoder_guidance")
                if getattr(args, name) is not None}
    paths = variations_to_folder(args.images, args.out, args.model, num_images=args.num_images, seed=args.seed,
                                 device=args.device, grid=not args.no_grid, settings=settings)
    print("\n".join(f"wrote {p}" for p in paths))


def add_unclip_commands(commands) -> None:
    """Add make-unclip and variations to the CLI's subcommands."""
    make = commands.add_parser("make-unclip", help="assemble an unCLIP folder (DALL-E 2): a prior "
                                                   "(train-unclip-prior) and a decoder (train --preset "
                                                   "fashion-mnist-unclip-decoder)")
    make.add_argument("out", help="the unCLIP folder to write (config.json only)")
    make.add_argument("--prior", required=True, help="a prior folder (a run's model/)")
    make.add_argument("--decoder", required=True, help="a decoder folder (a run's model/)")
    add_unclip_arguments(make)
    make.add_argument("--steps", type=int, default=None, help="the decoder's steps (default: its own)")
    make.add_argument("--sampler", default=None, help="the decoder's sampler (default: its own)")
    make.set_defaults(run=_make_unclip)

    var = commands.add_parser("variations", help="unCLIP image variations: each image's CLIP embedding decoded anew")
    var.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    var.add_argument("--model", required=True, help="an unCLIP folder (make-unclip)")
    var.add_argument("--num-images", type=int, default=4, help="variations per image")
    var.add_argument("--seed", type=int, default=0, help="image k of all gets seed + k")
    var.add_argument("--steps", type=int, default=None, help="the decoder's steps (default: the folder's)")
    var.add_argument("--sampler", default=None, help="the decoder's sampler (default: the folder's)")
    _add_decoder_guidance(var)
    var.add_argument("--out", default="outputs")
    var.add_argument("--device", default="cpu")
    var.add_argument("--no-grid", action="store_true")
    var.set_defaults(run=_variations)
