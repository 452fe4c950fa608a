"""The training commands of the generative family (ldmkit.family): `ldmkit train-gan` and
`ldmkit train-dalle`."""

from __future__ import annotations

import argparse

from .run_arguments import add_run_arguments, run_config


def _train_gan(args: argparse.Namespace) -> None:
    from ..train.gan import train_gan
    from ..train.gan_config import GAN_PRESETS

    summary = train_gan(run_config(GAN_PRESETS, args), args.out, device=args.device, resume=not args.no_resume)
    print(f"done: {summary.get('saved', args.out)} ({summary['steps']} steps, {summary['train_minutes']:.1f} min)")


def _train_dalle(args: argparse.Namespace) -> None:
    from ..train.dalle import train_dalle
    from ..train.dalle_config import DALLE_PRESETS

    summary = train_dalle(run_config(DALLE_PRESETS, args), args.out, device=args.device, resume=not args.no_resume)
    losses = ", ".join(f"{k}={summary[k]:.3f}" for k in ("eval_text_loss", "eval_image_loss") if k in summary)
    print(f"done: {summary.get('saved', args.out)} ({summary['steps']} steps, {summary['train_minutes']:.1f} min; "
          f"held-out {losses})")


def add_family_commands(commands) -> None:
    """Add train-gan and train-dalle to the CLI's subcommands."""
    from ..train.dalle_config import DALLE_PRESETS
    from ..train.gan_config import GAN_PRESETS

    gan = commands.add_parser("train-gan", help="train a class-conditional DCGAN on Fashion-MNIST (hinge loss, "
                                                "PatchGAN discriminator with a class projection)")
    add_run_arguments(gan, GAN_PRESETS, "fashion-mnist", "--set gan.d_norm=group --set batch_size=32")
    gan.set_defaults(run=_train_gan)
    dalle = commands.add_parser("train-dalle", help="train a miniature DALL-E: a transformer over caption tokens "
                                                    "and VQ codes")
    add_run_arguments(dalle, DALLE_PRESETS, "fashion-mnist", "--set width=128 --set batch_size=32")
    dalle.set_defaults(run=_train_dalle)
