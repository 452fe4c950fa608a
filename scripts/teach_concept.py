"""Teach the shapes model a colour it never saw, by each fine-tuning method, and measure it.

For each method: write 20 teaching images of purple shapes (captions naming the colour by the
method's word), fine-tune the shipped shapes model, reload a fresh model with the saved file
(so the shared file format is what gets measured), and report
- how often generations for "a <word> <shape> in the <quadrant>" are read as purple, over
  every shape and quadrant (concept_accuracy), before and after;
- the shapes evaluation of the old prompts (seen and held-out combinations), before and after.
Writes docs/results/finetune-concepts.json and docs/images/finetune_concepts.png.

    python scripts/teach_concept.py [--methods lora textual-inversion dreambooth hypernetwork]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ldmkit import Pipeline
from ldmkit.data import shapes
from ldmkit.evaluate import evaluate_shapes
from ldmkit.finetune.apply import apply_adapters
from ldmkit.finetune.concepts import concept_accuracy, concept_caption, write_concept_images
from ldmkit.finetune.config import METHODS, FinetuneConfig
from ldmkit.finetune.train import finetune
from ldmkit.utils.images import image_grid, save_png

WORDS = {"lora": "purple", "hypernetwork": "purple", "textual-inversion": "<purple>", "dreambooth": "sks"}
ROOT = Path(__file__).resolve().parent.parent


def method_config(method: str, data: Path, steps: int | None) -> FinetuneConfig:
    extra = {}
    if method == "textual-inversion":
        extra = {"token": WORDS[method], "initializer": "red"}
    elif method == "dreambooth":  # the prior: the model's own shapes in the colours it knows
        extra = {"class_prompts": tuple(shapes.caption(*c) for c in shapes.COMBINATIONS), "class_images": 96}
    return FinetuneConfig(method=method, data=str(data), **extra, **({"steps": steps} if steps else {}))


def load_finetuned(method: str, saved: str) -> Pipeline:
    """A fresh shapes model with the saved file applied, as a user would load it."""
    if method == "dreambooth":
        return Pipeline.from_pretrained(saved)
    pipe = Pipeline.from_pretrained("shapes")
    option = {"lora": "loras", "textual-inversion": "embeddings", "hypernetwork": "hypernetworks"}[method]
    apply_adapters(pipe, **{option: [f"{saved}:{WORDS[method]}" if method == "textual-inversion" else saved]})
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--runs", default="runs/finetune")
    parser.add_argument("--steps", type=int, default=None, help="override every method's steps")
    parser.add_argument("--per-combination", type=int, default=10, help="images per prompt in the measurements")
    parser.add_argument("--out", default=str(ROOT / "docs/results/finetune-concepts.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    n = args.per_combination
    base = Pipeline.from_pretrained("shapes")
    results = {"machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}",
               "before": {"concept_purple": concept_accuracy(base, "purple", per_combination=n),
                          "shapes": evaluate_shapes(base, per_combination=n)}, "methods": {}}
    print(json.dumps(results["before"], indent=1))
    rows, labels = [], []
    prompt_words = [concept_caption("purple", s, "top left") for s in shapes.SHAPES]
    rows += base.generate(prompt_words, num_images=6, seed=0)
    labels += [f"before: {p}" for p in prompt_words]
    for method in args.methods:
        word = WORDS[method]
        run = Path(args.runs) / method
        data = write_concept_images(run / "data", "purple", count=20, word=word)
        start = time.perf_counter()
        summary = finetune(Pipeline.from_pretrained("shapes"), method_config(method, data, args.steps), run)
        seconds = time.perf_counter() - start
        tuned = load_finetuned(method, summary["saved"])
        measured = {"word": word, "teaching_images": summary["images"], "steps": summary["steps"],
                    "finetune_seconds": seconds, "saved": summary["saved"],
                    "concept_purple": concept_accuracy(tuned, "purple", word=word, per_combination=n),
                    "shapes": evaluate_shapes(tuned, per_combination=n)}
        results["methods"][method] = measured
        print(method, json.dumps(measured, indent=1))
        prompts = [concept_caption(word, s, "top left") for s in shapes.SHAPES]
        rows += tuned.generate(prompts, num_images=6, seed=0)
        labels += [f"{method}: {p}" for p in prompts]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    grid = image_grid([im.resize((64, 64), 0) for im in rows], columns=6, row_labels=labels)
    save_png(grid, ROOT / "docs/images/finetune_concepts.png", {"methods": args.methods})
    print(f"wrote {args.out} and docs/images/finetune_concepts.png")


if __name__ == "__main__":
    main()
