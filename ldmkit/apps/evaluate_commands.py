"""The measuring commands: `ldmkit evaluate` (a model's FD, agreement and speed), `ldmkit
evaluate-tasks` (img2img, inpainting, an upscaler) and `ldmkit evaluate-controlnet` (obedience
to hints). Each prints its JSON and writes it with --out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..family import FamilyGenerator
from .guidance_commands import add_steering_arguments, evaluation_settings, scoring_clip


def _write(result, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate, load_for_evaluation

    pipe = load_for_evaluation(args.model, args.device, autoencoder=args.autoencoder)
    if isinstance(pipe, FamilyGenerator):  # sampled with their own settings, not a diffusion sampler's
        dataset = pipe.meta.get("dataset")
        raise ValueError(f"{args.model} is a {pipe.kind} of the generative family, which ldmkit evaluate does not "
                         f"score: use python -m benchmarks.family_table --dataset {dataset} --models {args.model}")
    if args.deepcache is not None:
        pipe.use_deepcache(args.deepcache)
    results = []
    clip = scoring_clip(pipe, args.clip)  # the CLIP score of a text model's images; reranking's CLIP
    for settings in evaluation_settings(args):
        result = evaluate(pipe, size=args.size, seed=args.seed, steps=args.steps, sampler=args.sampler, clip=clip,
                          **settings)
        results.append({"model": pipe.name, **result, **({"deepcache": args.deepcache} if args.deepcache else {})})
        print(json.dumps(results[-1], indent=2))
    _write(results if len(results) > 1 else results[0], args.out)


def _evaluate_tasks(args: argparse.Namespace) -> None:
    from ..pipelines import Pipeline
    from .evaluate_tasks import evaluate_image_tasks, evaluate_upscaling

    pipe = Pipeline.from_pretrained(args.model)
    if pipe.config.lowres:
        levels = {} if args.noise_level is None else {"noise_level": args.noise_level}
        measured = evaluate_upscaling(pipe, per_class=args.size, seed=args.seed, steps=args.steps, **levels)
    else:
        measured = evaluate_image_tasks(
            pipe, per_class=args.size, seed=args.seed, steps=args.steps, resample=args.resample
        )
    result = {"model": pipe.name, **measured}
    print(json.dumps(result, indent=2))
    _write(result, args.out)


def _evaluate_controlnet(args: argparse.Namespace) -> None:
    from .evaluate_controlnet import evaluate_controlnet_folder

    result = evaluate_controlnet_folder(
        args.model, args.controlnet, dataset=args.data, device=args.device, size=args.size, seed=args.seed,
        baseline=not args.no_baseline, control_scale=args.control_scale, steps=args.steps, sampler=args.sampler,
        guidance=args.guidance,
    )
    print(json.dumps(result, indent=2))
    _write(result, args.out)


def add_evaluate_commands(commands) -> None:
    ev = commands.add_parser("evaluate", help="measure a fashion-mnist or shapes model (distance, agreement, speed)")
    ev.add_argument("--model", default="fashion-mnist", help="a model (name or folder), or a run's checkpoint folder")
    ev.add_argument(
        "--size", type=int, default=None, help="images per prompt (default: 200 per class / 25 per combination)"
    )
    ev.add_argument("--steps", type=int, default=None)
    ev.add_argument("--sampler", default=None)
    ev.add_argument("--guidance", type=float, nargs="*", default=None, help="one or more scales (a sweep)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--autoencoder", default=None, help="decode with another first stage of the same latent space")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", default=None, help="JSON file for the results")
    ev.add_argument("--deepcache", type=int, default=None, metavar="N",
                    help="DeepCache: the UNet's deep part every N steps, reused between (default: off)")
    add_steering_arguments(ev, sweep=True)
    ev.set_defaults(run=_evaluate)

    tasks = commands.add_parser(
        "evaluate-tasks",
        help="img2img and inpainting (or an upscaler's super-resolution) on held-out Fashion-MNIST images",
    )
    tasks.add_argument("--model", default="fashion-mnist")
    tasks.add_argument("--size", type=int, default=20, help="test images per class")
    tasks.add_argument("--steps", type=int, default=None)
    tasks.add_argument("--seed", type=int, default=0)
    tasks.add_argument("--resample", type=int, default=0, help="RePaint passes per inpainting step")
    tasks.add_argument("--noise-level", type=int, default=None, help="an upscaler's noise level (default: the model's)")
    tasks.add_argument("--out", default=None, help="JSON file for the results")
    tasks.set_defaults(run=_evaluate_tasks)

    evc = commands.add_parser("evaluate-controlnet",
                              help="how well a ControlNet's images obey their hints (quadrant, IoU, colour, shape)")
    evc.add_argument("--model", default="shapes", help="the base model (a shipped name or a folder)")
    evc.add_argument("--controlnet", required=True, help="a ControlNet folder (train-controlnet's, or a checkpoint)")
    evc.add_argument("--data", default=None, choices=("fill-shapes", "fashion-mnist-edges"),
                     help="the hints (default: what the ControlNet was trained on)")
    evc.add_argument("--size", type=int, default=4,
                     help="hints per combination (fill-shapes: 48 combinations) / per class (edges: 10 classes)")
    evc.add_argument("--steps", type=int, default=None)
    evc.add_argument("--sampler", default=None)
    evc.add_argument("--guidance", type=float, default=None)
    evc.add_argument("--control-scale", type=float, default=1.0)
    evc.add_argument("--seed", type=int, default=0)
    evc.add_argument("--no-baseline", action="store_true", help="skip the same hints through the base alone")
    evc.add_argument("--device", default="cpu")
    evc.add_argument("--out", default=None, help="JSON file for the results")
    evc.set_defaults(run=_evaluate_controlnet)
