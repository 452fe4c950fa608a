"""The fine-tuning commands of `ldmkit`: finetune, concept-images, evaluate-concept."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..train.finetune_config import METHODS
from .concepts import CONCEPTS


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                        help="a LoRA (kohya, diffusers or ldmkit .safetensors); repeat to stack")
    parser.add_argument("--embedding", action="append", default=[], metavar="FILE[:TOKEN]",
                        help="a textual-inversion embedding (A1111 .pt/.safetensors, diffusers); the token "
                             "defaults to the file's own or its name")
    parser.add_argument("--hypernetwork", action="append", default=[], metavar="FILE[:STRENGTH]",
                        help="a hypernetwork (A1111 .pt or .safetensors)")


def adapters(args: argparse.Namespace) -> dict:
    return {"loras": args.lora, "embeddings": args.embedding, "hypernetworks": args.hypernetwork}


def _finetune(args: argparse.Namespace) -> None:
    import torch

    from ..config import from_dict, parse_sets, parse_value
    from ..pipelines import Pipeline
    from ..train.finetune import finetune
    from ..train.finetune_config import FinetuneConfig

    fields: dict = {"method": args.method, "data": args.data}
    fields |= {key: parse_value(raw) for key, raw in parse_sets(args.set).items()}
    given = {"steps": args.steps, "lr": args.lr, "token": args.token, "initializer": args.initializer,
             "rank": args.rank, "class_images": args.class_images, "class_prompts": args.class_prompt or None}
    fields |= {key: value for key, value in given.items() if value is not None}
    config = from_dict(FinetuneConfig, fields)
    pipe = Pipeline.from_pretrained(args.model, device=torch.device(args.device))
    summary = finetune(pipe, config, args.out, resume=not args.no_resume)
    print(f"done: wrote {summary['saved']} ({summary['steps']} steps, {summary['train_seconds']:.0f} s)")


def _concept_images(args: argparse.Namespace) -> None:
    from .concepts import write_concept_images

    folder = write_concept_images(args.out, args.concept, args.count, args.word, args.seed)
    print(f"wrote {args.count} captioned images of the concept {args.concept!r} to {folder}")


def _evaluate_concept(args: argparse.Namespace) -> None:
    from ..pipelines import Pipeline
    from .adapters import apply_adapters
    from .concepts import concept_accuracy
    from .evaluate import evaluate_shapes

    pipe = Pipeline.from_pretrained(args.model)
    applied = apply_adapters(pipe, **adapters(args))
    result = {"model": pipe.name, **applied,
              "concept": concept_accuracy(pipe, args.concept, args.word, per_combination=args.size),
              "shapes": evaluate_shapes(pipe, per_combination=args.size)}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def add_finetune_commands(commands) -> None:
    ft = commands.add_parser(
        "finetune", help="teach a model a new concept: LoRA, textual inversion, DreamBooth, hypernetwork"
    )
    ft.add_argument("method", choices=METHODS)
    ft.add_argument(
        "--data", required=True, help="a folder of images with captions (.txt beside each, or metadata.jsonl)"
    )
    ft.add_argument("--out", required=True, help="run folder: log, loss plot, checkpoints, samples and the saved file")
    ft.add_argument("--model", default="shapes", help="a shipped model, a model folder, an SD file or diffusers folder")
    ft.add_argument("--steps", type=int, default=None)
    ft.add_argument("--lr", type=float, default=None, help="default: the method's (see ldmkit.finetune.config)")
    ft.add_argument("--token", default=None, help="textual inversion: the new token, e.g. '<purple>'")
    ft.add_argument("--initializer", default=None, help="textual inversion: a word the token starts from")
    ft.add_argument("--rank", type=int, default=None, help="LoRA rank")
    ft.add_argument("--class-prompt", action="append", default=[],
                    help="DreamBooth: a prompt of the class without the identifier (repeat for several)")
    ft.add_argument("--class-images", type=int, default=None, help="DreamBooth: prior images to generate first")
    ft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any FinetuneConfig field, e.g. --set lora_targets='[\"attention\",\"conv\"]'")
    ft.add_argument("--device", default="cpu")
    ft.add_argument("--no-resume", action="store_true", help="start afresh even if the folder has checkpoints")
    ft.set_defaults(run=_finetune)

    data = commands.add_parser("concept-images", help="write teaching images of a concept the shapes model never saw")
    data.add_argument("--out", required=True)
    data.add_argument("--concept", default="ring", choices=CONCEPTS)
    data.add_argument("--word", default=None, help="what the captions call the concept (default: its name)")
    data.add_argument("--count", type=int, default=20)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(run=_concept_images)

    ev = commands.add_parser(
        "evaluate-concept", help="how often a (fine-tuned) shapes model draws a concept, and its old prompts"
    )
    ev.add_argument("--model", default="shapes")
    ev.add_argument("--concept", default="ring", choices=CONCEPTS)
    ev.add_argument("--word", default=None, help="what the prompts call the concept (default: its name)")
    ev.add_argument("--size", type=int, default=10, help="images per prompt")
    ev.add_argument("--out", default=None, help="JSON file for the results")
    add_adapter_arguments(ev)
    ev.set_defaults(run=_evaluate_concept)
