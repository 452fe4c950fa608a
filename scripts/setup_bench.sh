#!/usr/bin/env bash
# Installs the "bench" extra into .venv: OpenVINO and stable-diffusion.cpp's Python binding,
# the engines benchmarks/cpu_engines.py measures ldmkit against. Run scripts/setup.sh first.
#
# stable-diffusion-cpp-python ships as a source archive: pip compiles stable-diffusion.cpp and
# ggml with cmake and a C++ compiler (46 minutes here: one job, niced, on 2 busy cores). ggml's GGML_NATIVE (on by
# default, set here explicitly) builds for this CPU's instruction set (-march=native: AVX2,
# AVX-512, AVX512-BF16 where present), so a build is only valid on the machine that made it.
# WebP/WebM output is not needed and not built. Log: runs/sdcpp-build.log.
#
#   scripts/setup_bench.sh              # foreground
#   LDMKIT_BUILD_JOBS=2 scripts/setup_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "setup_bench: run scripts/setup.sh first (no .venv)" >&2; exit 1; }
# the build takes long: skip it when both engines import (LDMKIT_BENCH_REBUILD=1 builds again)
if [ -z "${LDMKIT_BENCH_REBUILD:-}" ] && .venv/bin/python -c "import openvino, stable_diffusion_cpp" 2>/dev/null; then
  echo "setup_bench: openvino and stable-diffusion-cpp-python are installed"; exit 0
fi
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ >/dev/null
  else
    echo "setup_bench: install cmake and g++ (as root: apt-get install -y cmake g++)" >&2; exit 1
  fi
fi
mkdir -p runs
export CMAKE_BUILD_PARALLEL_LEVEL="${LDMKIT_BUILD_JOBS:-1}"
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DSD_WEBP=OFF -DSD_WEBM=OFF}"
# torch is already installed and pinned by scripts/setup.sh; neither package asks for it.
if [ -n "${LDMKIT_BENCH_REBUILD:-}" ]; then  # a fresh build, not pip's cached wheel (built for another CPU?)
  .venv/bin/python -m pip --disable-pip-version-check uninstall -y -q stable-diffusion-cpp-python || true
fi
nice -n 10 .venv/bin/python -m pip --disable-pip-version-check install -v ${LDMKIT_BENCH_REBUILD:+--no-cache-dir} -e ".[bench]" \
  > runs/sdcpp-build.log 2>&1 || { echo "setup_bench: failed, see runs/sdcpp-build.log" >&2; exit 1; }
.venv/bin/python -c "import openvino, stable_diffusion_cpp; print('openvino', openvino.__version__)"
