"""Results files, written whole or not at all: a benchmark killed while writing leaves the previous
version, not half a file (the resumable benchmarks read their file back to go on)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(data: dict, path: str | Path, indent: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=indent) + "\n")
    os.replace(partial, path)
    return path
