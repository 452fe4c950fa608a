"""The options of `ldmkit generate` and `ldmkit evaluate` for guidance beyond classifier-free
guidance (ldmkit/pipelines/guidance.py): a noisy latent classifier, CLIP guidance, best-of-N
reranking by CLIP, and the CLIP score of what a text model generates."""

from __future__ import annotations

import argparse
import itertools


def add_steering_arguments(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    """--classifier, --classifier-scale, --classifier-label, --clip, --clip-guidance, --rerank;
    with `sweep`, --classifier-scale takes several values (ldmkit evaluate)."""
    parser.add_argument("--classifier", default=None,
                        help="a noisy latent classifier folder (ldmkit train-noisy-classifier): classifier guidance")
    many = {"nargs": "*", "default": None} if sweep else {"default": 1.0}
    parser.add_argument("--classifier-scale", type=float, **many,
                        help="classifier guidance scale" + (" (one or more: a sweep)" if sweep else " (default 1)"))
    if not sweep:
        parser.add_argument("--classifier-label", type=int, action="append", default=None, metavar="K",
                            help="the class to steer to, instead of the one the prompt names; repeat for several "
                                 "(with an empty prompt: the unconditional model)")
        parser.add_argument("--clip-guidance", type=float, default=0.0,
                            help="CLIP guidance scale towards the prompt (0: off)")
    parser.add_argument("--rerank", type=int, default=1, metavar="N",
                        help="make N candidates of each image and keep the one CLIP scores highest")
    parser.add_argument("--clip", default=None,
                        help="the CLIP: 'clip-small', a CLIP folder or a transformers CLIPModel folder "
                             "(default: clip-small for text models)")


def steering_options(args: argparse.Namespace) -> dict:
    """generate_to_folder's `steering`: only what was asked for."""
    options = {}
    if args.classifier is not None:
        options |= {"classifier": args.classifier, "classifier_scale": args.classifier_scale}
        if args.classifier_label:
            options["classifier_labels"] = args.classifier_label
    elif args.classifier_label:
        raise ValueError("--classifier-label needs --classifier")
    if args.clip_guidance:
        options["clip_guidance"] = args.clip_guidance
    if args.rerank != 1:
        options["rerank"] = args.rerank
    if args.clip is not None:
        if not ({"clip_guidance", "rerank"} & set(options)):
            raise ValueError("--clip is used by --rerank and --clip-guidance: give one of them")
        options["clip"] = args.clip
    return {"steering": options} if options else {}


def evaluation_settings(args: argparse.Namespace) -> list[dict]:
    """One dict of generate() settings per evaluation: every --guidance with every --classifier-scale."""
    if args.classifier is None and args.classifier_scale:
        raise ValueError("--classifier-scale needs --classifier")
    runs = []
    for guidance, scale in itertools.product(args.guidance or [None], args.classifier_scale or [None]):
        settings = {"guidance": guidance}
        if args.classifier is not None:
            settings |= {"classifier": args.classifier, "classifier_scale": 1.0 if scale is None else scale}
        if args.rerank != 1:
            settings["rerank"] = args.rerank
        runs.append(settings)
    return runs


def scoring_clip(pipe, name: str | None):
    """The CLIP that scores a model's images (and reranks them): the one named, or clip-small for a
    text model when it exists (None, with a note, when it does not yet); None for other models."""
    from ..pipelines.guidance import DEFAULT_CLIP, resolve_clip

    if name is not None:
        return resolve_clip(pipe, name, "scoring")
    if pipe.config.conditioning != "text":
        return None
    try:
        return resolve_clip(pipe, DEFAULT_CLIP, "scoring")
    except FileNotFoundError as error:
        print(f"no CLIP score: {error}")
        return None
