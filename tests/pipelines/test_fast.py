"""The fast path (ldmkit.pipelines.fast) and DeepCache through the pipeline: each path's images
against float32 eager within a stated tolerance, the same images run to run, the choice on fake
CPU flags, the settings recorded in the PNG text, clear errors."""

import copy
import os

import pytest
import torch

from ldmkit.apps.cli import main
from ldmkit.apps.generate import generate_to_folder
from ldmkit.pipelines import Pipeline
from ldmkit.pipelines.fast import FastPath, apply, choose_fast_path
from ldmkit.pipelines.infotext import parse_infotext
from ldmkit.utils.images import read_png_metadata

PROMPT = "a red circle in the top left"
RUN = dict(num_images=2, steps=6, output="tensor", seed=1)


@pytest.fixture(scope="module")
def exact():
    return Pipeline.from_pretrained("shapes")


@pytest.fixture(scope="module")
def reference(exact):
    return exact.generate(PROMPT, **RUN)


def on_path(pipe: Pipeline, path: FastPath) -> Pipeline:
    return apply(copy.deepcopy(pipe), path)


def test_the_choice_follows_the_cpu_flags():
    zen4, old_xeon = {"avx512f", "avx512_bf16"}, {"avx2", "avx512f"}
    assert choose_fast_path("cpu", False, zen4) == FastPath()
    assert choose_fast_path("cpu", True, zen4) == FastPath(dtype=torch.bfloat16)
    assert choose_fast_path("cpu", True, {"amx_bf16"}) == FastPath(dtype=torch.bfloat16)
    assert choose_fast_path("cpu", True, old_xeon) == FastPath()  # emulated bf16 is slower than float32
    assert choose_fast_path("cpu", "compile", zen4, openvino=True) == FastPath(compile="openvino",
                                                                              compile_precision="bf16")
    assert choose_fast_path("cpu", "compile", old_xeon, openvino=True) == FastPath(compile="openvino",
                                                                                  compile_precision="f32")
    with pytest.warns(UserWarning, match="OpenVINO is not installed"):
        assert choose_fast_path("cpu", "compile", zen4, openvino=False) == FastPath(dtype=torch.bfloat16,
                                                                                   compile="inductor")
    assert choose_fast_path("cpu", "openvino-f32", zen4, openvino=True) == FastPath(compile="openvino",
                                                                                   compile_precision="f32")
    with pytest.raises(ImportError, match="pip install 'ldmkit\\[fast\\]'"):
        choose_fast_path("cpu", "openvino", zen4, openvino=False)
    assert FastPath(compile="openvino", compile_precision="bf16").describe() == "fp32 openvino-bf16"


def test_bad_fast_values_are_refused_clearly():
    for bad in ("yes", 1, "bf16"):
        with pytest.raises(ValueError, match="fast must be one of"):
            Pipeline.from_pretrained("shapes", fast=bad)
    with pytest.raises(ValueError, match="give fast= or dtype=, not both"):
        Pipeline.from_pretrained("shapes", fast=True, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="DiT, which has no such skips"):
        Pipeline.from_pretrained("shapes-dit", deepcache_interval=2)
    with pytest.raises(ValueError, match="interval must be a whole number >= 1"):
        Pipeline.from_pretrained("shapes", deepcache_interval=0)


def test_bf16_weights_stay_within_bf16_round_off_of_float32(exact, reference):
    """bf16 keeps 8 significant bits (relative round-off 2**-9 = 0.2% a rounding); a UNet step
    compounds a few dozen of them into about 1% of eps, six steps into under 1% of the image's
    range on average: mean |diff| < 0.02 on [-1, 1] images, and no pixel off by half the range."""
    fast = on_path(exact, FastPath(dtype=torch.bfloat16))
    assert fast.dtype == torch.bfloat16
    images = fast.generate(PROMPT, **RUN)
    assert images.dtype == torch.float32  # the sampler stays float32; only the networks see bf16
    diff = (images - reference).abs()
    assert 0 < diff.mean() < 0.02 and diff.max() < 1.0
    assert torch.equal(fast.generate(PROMPT, **RUN), images)  # the same seed, the same image


def test_channels_last_is_float32_exact_up_to_reassociation(exact, reference):
    images = on_path(exact, FastPath(channels_last=True)).generate(PROMPT, **RUN)
    torch.testing.assert_close(images, reference, rtol=0, atol=1e-4)


@pytest.mark.skipif(not os.environ.get("LDMKIT_COMPILE_TESTS"),
                    reason="inductor compiles C++ (49 s for this model, minutes under load): LDMKIT_COMPILE_TESTS=1")
def test_inductor_compiled_unet_matches_eager(exact, reference):
    """The compiled graph reorders float32 sums: 1e-3 of the image range covers it."""
    pipe = on_path(exact, FastPath(compile="inductor"))
    images = pipe.generate(PROMPT, **RUN)
    torch.testing.assert_close(images, reference, rtol=0, atol=1e-3)
    assert torch.equal(pipe.generate(PROMPT, **RUN), images)


def test_openvino_unet_and_decoder_match_eager(exact, reference):
    """OpenVINO in f32 reorders float32 sums (1e-3 of the image range); the same seed gives the same
    image; DeepCache, which needs the blocks one by one, is refused on it."""
    pytest.importorskip("openvino")
    pipe = on_path(exact, FastPath(compile="openvino", compile_precision="f32"))
    images = pipe.generate(PROMPT, **RUN)
    assert len(pipe.autoencoder.decoder.forward.compiled) == 1  # the decoder ran by OpenVINO too
    torch.testing.assert_close(images, reference, rtol=0, atol=1e-3)
    assert torch.equal(pipe.generate(PROMPT, **RUN), images)
    pipe.deepcache_interval = 2
    with pytest.raises(RuntimeError, match="use DeepCache or a compiled UNet, not both"):
        pipe.generate(PROMPT, **RUN)


def test_converted_graphs_are_read_back_from_the_disk_cache(exact, reference, monkeypatch, tmp_path):
    """A second pipeline with the same weights reads the graphs the first one converted; other
    weights are converted anew."""
    ov = pytest.importorskip("openvino")
    monkeypatch.setenv("LDMKIT_CACHE", str(tmp_path))
    path = FastPath(compile="openvino", compile_precision="f32")
    first = on_path(exact, path).generate(PROMPT, **RUN)
    saved = sorted(p.name for p in (tmp_path / "openvino").iterdir() if p.is_file())
    assert len(saved) == 4 and not any("partial" in name for name in saved)  # UNet and decoder: .xml + .bin each
    assert len(list((tmp_path / "openvino" / "compiled").glob("*.blob"))) == 2  # OpenVINO's compiled models
    for graph in (tmp_path / "openvino").glob("*.xml"):  # static shapes: the CPU plugin's static kernels
        assert all(i.get_partial_shape().is_static for i in ov.Core().read_model(graph).inputs), graph.name

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(ov, "convert_model", no_conversion)
    torch.testing.assert_close(on_path(exact, path).generate(PROMPT, **RUN), first, rtol=0, atol=0)
    changed = copy.deepcopy(exact)
    with torch.no_grad():
        changed.net.conv_in.bias.add_(1e-3)
    with pytest.raises(AssertionError, match="converted again"):
        on_path(changed, path).generate(PROMPT, **RUN)


def test_openvino_runs_the_tiny_decoder_too(exact):
    pytest.importorskip("openvino")
    eager = copy.deepcopy(exact).use_tiny_decoder()
    pipe = on_path(exact, FastPath(compile="openvino", compile_precision="f32")).use_tiny_decoder()
    run = dict(RUN, steps=2)
    torch.testing.assert_close(pipe.generate(PROMPT, **run), eager.generate(PROMPT, **run), rtol=0, atol=1e-3)
    assert len(pipe.tiny_decoder().decoder.forward.compiled) == 1


def test_deepcache_through_the_pipeline(exact, reference):
    """Interval 1 is the plain run exactly. DeepCache is for many steps: at 20 steps, interval 2
    moved the shapes model's images by 0.0012 on average (at 6 steps by 0.12: adjacent steps far
    apart share little)."""
    many = {**RUN, "steps": 20}
    plain = exact.generate(PROMPT, **many)
    exact.deepcache_interval = 1
    try:
        assert torch.equal(exact.generate(PROMPT, **RUN), reference)  # a full pass every step: no caching
        exact.deepcache_interval = 2
        cached = exact.generate(PROMPT, **many)
        assert torch.equal(exact.generate(PROMPT, **many), cached)  # a fresh cache each run
    finally:
        exact.deepcache_interval = None
    assert 0 < (cached - plain).abs().mean() < 0.01


def test_the_png_text_records_the_fast_path_and_deepcache(tmp_path, exact):
    pipe = on_path(exact, FastPath(dtype=torch.bfloat16))
    paths = generate_to_folder(PROMPT, tmp_path, num_images=1, steps=2, deepcache=2, pipeline=pipe, grid=False)
    meta = read_png_metadata(paths[0])
    assert meta["fast"] == "bf16" and meta["deepcache"] == "2"
    assert {"fast": "bf16", "deepcache": 2}.items() <= parse_infotext(meta["parameters"]).items()
    assert pipe.deepcache_interval is None  # the request's setting, for that request only
    plain = read_png_metadata(generate_to_folder(PROMPT, tmp_path, num_images=1, steps=2, pipeline=exact,
                                                 grid=False)[0])
    assert "fast" not in plain and "deepcache" not in plain


def test_the_command_line_takes_fast_and_deepcache(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ldmkit.pipelines.fast.cpu_flags", lambda: {"avx512_bf16"})  # as on a Zen 4
    args = ["generate", PROMPT, "--model", "shapes", "--num-images", "1", "--steps", "2", "--out", str(tmp_path)]
    assert main([*args, "--fast", "--deepcache", "2", "--no-grid"]) == 0
    meta = read_png_metadata(tmp_path / "00000_seed0.png")
    assert meta["fast"] == "bf16" and meta["deepcache"] == "2"
    for bad, message in [(["--deepcache", "0"], "deepcache must be a whole number >= 1"),
                         (["--fast", "--dtype", "bf16"], "give fast= or dtype=, not both"),
                         (["--model", "shapes-dit", "--deepcache", "2"], "has no such skips")]:
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
