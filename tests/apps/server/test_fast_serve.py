"""`ldmkit serve --fast`: the server loads its diffusion models on the fast path, and the family
models (a GAN has no such path) as they are."""

import shutil

from ldmkit.apps.cli import build_parser
from ldmkit.apps.server.registry import Registry
from ldmkit.apps.server.worker import Worker
from ldmkit.model.folder import MODELS_DIR
from ldmkit.pipelines.fast import choose_fast_path


def test_the_worker_loads_diffusion_models_on_the_fast_path(tmp_path):
    shutil.copytree(MODELS_DIR / "fashion-mnist-gan", tmp_path / "fashion-mnist-gan")
    worker = Worker(Registry(tmp_path, "fashion-mnist"), "fashion-mnist", fast=True)
    try:
        pipe = worker.call(lambda w: w.pipeline(), "load")
        assert pipe.fast_path == choose_fast_path("cpu", True)
        gan = worker.call(lambda w: w.pipeline("fashion-mnist-gan"), "load")  # loads, with no fast path to take
        assert not hasattr(gan, "fast_path")
    finally:
        worker.stop()


def test_serve_takes_fast():
    args = build_parser().parse_args(["serve", "--fast"])
    assert args.fast == "auto"
    assert build_parser().parse_args(["serve"]).fast is None
