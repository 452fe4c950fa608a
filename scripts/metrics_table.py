"""Print a markdown table of the metrics.json of each run folder given.
Usage: .venv/bin/python scripts/metrics_table.py runs/a runs/b ..."""

import json
import sys
from pathlib import Path

COLUMNS = ["steps", "train_minutes", "images_per_s", "psnr", "ssim", "gradient_energy_ratio", "codebook_usage",
           "scaling_factor"]

rows = []
for run in sys.argv[1:]:
    path = Path(run) / "metrics.json"
    if path.is_file():
        rows.append((Path(run).name, json.loads(path.read_text())))
print("| run | " + " | ".join(COLUMNS) + " |")
print("|---" * (len(COLUMNS) + 1) + "|")
for name, metrics in rows:
    cells = []
    for key in COLUMNS:
        value = metrics.get(key)
        cells.append("" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))
    print(f"| {name} | " + " | ".join(cells) + " |")
