"""The `ldmkit train-gan` command: `register(commands)` adds it to the CLI's subcommands."""

from __future__ import annotations

import argparse


def _train_gan(args: argparse.Namespace) -> None:
    from ..train.gan import train_gan
    from ..train.gan_config import GAN_PRESETS
    from .cli import _run_config  # here, not at the top: cli imports this module

    summary = train_gan(_run_config(GAN_PRESETS, args), args.out, device=args.device, resume=not args.no_resume)
    print(f"done: {summary.get('saved', args.out)} ({summary['steps']} steps, {summary['train_minutes']:.1f} min)")


def register(commands) -> None:
    """Add `train-gan` to an argparse subparsers object (the CLI's `commands`)."""
    from ..train.gan_config import GAN_PRESETS
    from .cli import _add_run_arguments

    gan = commands.add_parser("train-gan", help="train a class-conditional DCGAN on Fashion-MNIST (hinge loss, "
                                                "PatchGAN discriminator with a class projection)")
    _add_run_arguments(gan, GAN_PRESETS, "fashion-mnist", "--set gan.d_norm=group --set batch_size=32")
    gan.set_defaults(run=_train_gan)
