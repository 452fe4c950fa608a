"""Teach the shapes model a shape it never saw (a ring), by each fine-tuning method, and measure it.

For each method: write 20 teaching images of rings (captions naming the shape by the method's
word), fine-tune the shipped shapes model, reload a fresh model with the saved file (so the
shared file format is what gets measured), and report
- how often generations for "a <colour> <word> in the <quadrant>" are read as rings, over
  every colour and quadrant (concept_accuracy), before and after;
- the shapes evaluation of the old prompts (seen and held-out combinations), before and after.
Writes docs/results/finetune-concepts.json and docs/images/finetune_concepts.png.

    python scripts/teach_concept.py [--methods lora textual-inversion dreambooth hypernetwork] [--concept ring]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ldmkit import Pipeline
from ldmkit.apps.adapters import apply_adapters
from ldmkit.apps.concepts import (
    CONCEPTS,
    concept_accuracy,
    concept_caption,
    concept_combinations,
    write_concept_images,
)
from ldmkit.apps.evaluate import evaluate_shapes
from ldmkit.data import shapes
from ldmkit.train.finetune import finetune
from ldmkit.train.finetune_config import METHODS, FinetuneConfig
from ldmkit.utils.images import image_grid, save_png

# how each method's captions name the concept: the plain word, a new token, a rare identifier
WORDS = {"lora": "{}", "hypernetwork": "{}", "textual-inversion": "<{}>", "dreambooth": "sks"}
INITIALIZER = {"ring": "circle", "purple": "blue", "orange": "red", "thing": "thing"}  # textual inversion starts here
ROOT = Path(__file__).resolve().parent.parent


# the settings measured best in a small sweep (docs/finetune.md); the prior (DreamBooth's class
# images, kohya's regularization images) is the model's own drawings of all 48 old prompts
PRIOR = {"class_prompts": tuple(shapes.caption(*c) for c in shapes.COMBINATIONS), "class_images": 96}
SETTINGS = {
    "lora": {"rank": 8, "lora_targets": ("attention", "feed_forward", "conv"), "steps": 1000, "prior_weight": 0.5,
             **PRIOR},
    "dreambooth": {"steps": 600, **PRIOR},
    "hypernetwork": {"steps": 600, **PRIOR},
    "textual-inversion": {"steps": 800, "vectors": 4, "lr": 1e-2},
}


def method_config(method: str, concept: str, data: Path, steps: int | None) -> FinetuneConfig:
    extra = dict(SETTINGS[method])
    if method == "textual-inversion":
        extra |= {"token": WORDS[method].format(concept), "initializer": INITIALIZER[concept]}
    return FinetuneConfig(method=method, data=str(data), **(extra | ({"steps": steps} if steps else {})))


def load_finetuned(method: str, word: str, saved: str) -> Pipeline:
    """A fresh shapes model with the saved file applied, as a user would load it."""
    if method == "dreambooth":
        return Pipeline.from_pretrained(saved)
    pipe = Pipeline.from_pretrained("shapes")
    option = {"lora": "loras", "textual-inversion": "embeddings", "hypernetwork": "hypernetworks"}[method]
    apply_adapters(pipe, **{option: [f"{saved}:{word}" if method == "textual-inversion" else saved]})
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--concept", default="ring", choices=CONCEPTS)
    parser.add_argument("--runs", default="runs/finetune")
    parser.add_argument("--steps", type=int, default=None, help="override every method's steps")
    parser.add_argument("--per-combination", type=int, default=10, help="images per prompt in the measurements")
    parser.add_argument("--out", default=str(ROOT / "docs/results/finetune-concepts.json"))
    parser.add_argument("--figure", default=str(ROOT / "docs/images/finetune_concepts.png"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    n, concept = args.per_combination, args.concept
    shown = concept_combinations(concept)[::4][:4]  # one per colour (or shape), top left
    base = Pipeline.from_pretrained("shapes")
    results = {"machine": f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}", "concept": concept,
               "before": {"concept": concept_accuracy(base, concept, per_combination=n),
                          "shapes": evaluate_shapes(base, per_combination=n)}, "methods": {}}
    print(json.dumps(results["before"], indent=1))
    prompts = [concept_caption(c, concept) for c in shown]
    rows, labels = base.generate(prompts, num_images=6, seed=0), [f"before: {p}" for p in prompts]
    for method in args.methods:
        word = WORDS[method].format(concept)
        run = Path(args.runs) / method
        data = write_concept_images(run / "data", concept, count=20, word=word)
        start = time.perf_counter()
        summary = finetune(Pipeline.from_pretrained("shapes"), method_config(method, concept, data, args.steps), run)
        seconds = time.perf_counter() - start
        tuned = load_finetuned(method, word, summary["saved"])
        measured = {"word": word, "teaching_images": summary["images"], "steps": summary["steps"],
                    "finetune_seconds": seconds, "saved": summary["saved"],
                    "concept": concept_accuracy(tuned, concept, word=word, per_combination=n),
                    "shapes": evaluate_shapes(tuned, per_combination=n)}
        results["methods"][method] = measured
        print(method, json.dumps(measured, indent=1))
        prompts = [concept_caption(c, concept, word) for c in shown]
        rows += tuned.generate(prompts, num_images=6, seed=0)
        labels += [f"{method}: {p}" for p in prompts]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    grid = image_grid([im.resize((64, 64), 0) for im in rows], columns=6, row_labels=labels)
    save_png(grid, args.figure, {"methods": args.methods, "concept": concept})
    print(f"wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
