"""The training commands of the generative family (ldmkit.family): `ldmkit train-gan`,
`ldmkit train-vae`, `ldmkit train-dalle` and `ldmkit train-unclip-prior`."""

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


def _train_vae(args: argparse.Namespace) -> None:
    from ..train.vae import train_vae
    from ..train.vae_config import VAE_PRESETS

    summary = train_vae(run_config(VAE_PRESETS, args), args.out, device=args.device, resume=not args.no_resume)
    print(f"done: {summary.get('saved', args.out)} ({summary['steps']} steps, {summary['train_minutes']:.1f} min; "
          f"nll {summary.get('nll', float('nan')):.1f}, kl {summary.get('kl', float('nan')):.1f} nats)")


def _train_unclip_prior(args: argparse.Namespace) -> None:
    from ..train.unclip_prior import train_unclip_prior
    from ..train.unclip_prior_config import PRIOR_PRESETS

    config = run_config(PRIOR_PRESETS, args)
    summary = train_unclip_prior(config, args.out, device=args.device, resume=not args.no_resume)
    measured = ", ".join(f"{k}={summary[k]:.3f}" for g in config.eval_guidance
                         for k in (f"cosine_g{g:g}", f"retrieval_g{g:g}") if k in summary)
    baselines = ", ".join(f"{k}={summary[k]:.3f}" for k in ("cosine_text", "cosine_oracle", "retrieval_images")
                          if k in summary)
    print(f"done: {summary.get('saved', args.out)} ({summary['steps']} steps, {summary['train_minutes']:.1f} min; "
          f"held-out {measured}; baselines {baselines})")


def add_family_commands(commands) -> None:
    """Add train-gan, train-vae, train-dalle and train-unclip-prior to the CLI's subcommands."""
    from ..train.dalle_config import DALLE_PRESETS
    from ..train.gan_config import GAN_PRESETS
    from ..train.unclip_prior_config import PRIOR_PRESETS
    from ..train.vae_config import VAE_PRESETS

    gan = commands.add_parser("train-gan", help="train a class-conditional DCGAN on Fashion-MNIST or shapes (hinge "
                                                "loss, PatchGAN discriminator with a class projection)")
    add_run_arguments(gan, GAN_PRESETS, "fashion-mnist", "--set gan.d_norm=group --set batch_size=32")
    gan.set_defaults(run=_train_gan)
    vae = commands.add_parser("train-vae", help="train a class-conditional VAE on Fashion-MNIST or shapes (the "
                                                "GAN's generator as its decoder, a weighted ELBO)")
    add_run_arguments(vae, VAE_PRESETS, "fashion-mnist", "--set kl_weight=0.5 --set vae.z_dim=16")
    vae.set_defaults(run=_train_vae)
    dalle = commands.add_parser("train-dalle", help="train a miniature DALL-E: a transformer over caption tokens "
                                                    "and VQ codes")
    add_run_arguments(dalle, DALLE_PRESETS, "fashion-mnist", "--set width=128 --set batch_size=32")
    dalle.set_defaults(run=_train_dalle)
    prior = commands.add_parser("train-unclip-prior", help="train DALL-E 2's diffusion prior: a causal transformer "
                                                           "from a caption's CLIP text encoding to CLIP image "
                                                           "embeddings")
    add_run_arguments(prior, PRIOR_PRESETS, "fashion-mnist", "--set width=128 --set guidance=2")
    prior.set_defaults(run=_train_unclip_prior)
