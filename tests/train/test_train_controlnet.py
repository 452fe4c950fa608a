"""ControlNet training on a tiny base: a run stopped and resumed equals an uninterrupted one bit
for bit, the base is not changed, the saved ControlNet loads into the pipeline and steers it, its
log and plots are written, bad configs are refused."""

import json
from dataclasses import replace

import pytest
import torch
from controlnet_models import tiny_shapes_model

from ldmkit import Pipeline
from ldmkit.data.fill_shapes import fill_shape
from ldmkit.storage import CheckpointError, load_checkpoint
from ldmkit.train.controlnet import train_controlnet
from ldmkit.train.controlnet_config import CONTROLNET_PRESETS, ControlDataConfig, ControlNetTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = CONTROLNET_PRESETS["tiny"]
TIMING = ("seconds_per_step", "measure_seconds")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_shapes_model(tmp_path_factory.mktemp("base") / "tiny-shapes")


@pytest.fixture(scope="module")
def whole(base, tmp_path_factory):
    """An uninterrupted tiny run, on a loaded base whose weights it must leave alone."""
    torch.set_num_threads(1)
    pipe = Pipeline.from_pretrained(base)
    before = {k: v.clone() for k, v in pipe.net.state_dict().items()}
    run = tmp_path_factory.mktemp("whole")
    summary = train_controlnet(replace(TINY, base=str(base)), run, progress=False, pipe=pipe)
    return run, summary, pipe, before


def test_resume_after_a_stop_equals_an_uninterrupted_run(base, whole, tmp_path):
    run, _, _, _ = whole
    config = replace(TINY, base=str(base))
    train_controlnet(config, tmp_path, progress=False, max_steps=2)
    assert not (tmp_path / "controlnet").exists()  # not finished
    train_controlnet(config, tmp_path, progress=False)
    for folder in ("checkpoints/step-00000004", "controlnet"):
        a, b = load_checkpoint(run / folder)[0]["controlnet"], load_checkpoint(tmp_path / folder)[0]["controlnet"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    strip = lambda path: [{k: v for k, v in r.items() if k not in TIMING}  # noqa: E731
                          for r in map(json.loads, path.read_text().splitlines())]
    assert strip(tmp_path / "log.jsonl") == strip(run / "log.jsonl") and len(strip(run / "log.jsonl")) == 4


def test_the_base_is_unchanged_and_only_the_controlnet_trained(whole):
    run, _, pipe, before = whole
    after = pipe.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in pipe.net.parameters()) and pipe.controlnets == []
    trained = load_checkpoint(run / "controlnet")[0]["controlnet"]
    zero_convs = [v for k, v in trained.items() if k.startswith(("controlnet_down_blocks", "controlnet_mid_block"))]
    assert zero_convs and all(torch.count_nonzero(v) > 0 for v in zero_convs)  # moved off their zero start


def test_the_run_folder_and_the_saved_controlnet(base, whole):
    run, summary, _, _ = whole
    assert summary["saved"] == str(run / "controlnet") and summary["steps"] == 4
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    measured = [r for r in records if "obey_quadrant" in r]
    assert [r["step"] for r in measured] == [2, 4]
    assert all(0 <= r[f"obey_{k}"] <= 1 for r in measured for k in ("quadrant", "iou", "colour", "shape", "all"))
    assert set(summary["obedience"]) == {"quadrant", "iou", "colour", "shape", "all"}
    for name in ("training.png", "samples/step_000002.png", "samples/step_000004.png"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "controlnet" / "config.json").read_text())
    assert meta["kind"] == "controlnet" and meta["base"] == str(base) and meta["train"]["prompt_dropout"] == 0.5
    assert not (run / "controlnet" / "train_state.pt").exists()

    pipe = Pipeline.from_pretrained(base)
    net = pipe.load_controlnet(run / "controlnet")
    assert net.name == "controlnet" and net.config.hint_channels == 3 and net.config.hint_factor == 4
    hint, _, prompt = fill_shape("red", "square", "bottom left", gen=torch.Generator().manual_seed(0))
    plain = pipe.generate(prompt, seed=1, output="latent")
    assert torch.equal(pipe.generate(prompt, control_image=hint, control_scale=0.0, seed=1, output="latent"), plain)
    steered = pipe.generate(prompt, control_image=hint, seed=1, output="latent")
    assert (steered - plain).abs().max() > 0  # four steps at lr 1e-4 do steer, a little
    image = pipe.generate(prompt, control_image=hint, seed=1)[0]
    assert image.size == (32, 32)
    pipe.unload_controlnets()  # a checkpoint folder is a ControlNet folder too
    assert pipe.load_controlnet(run / "checkpoints" / "step-00000002").name == "step-00000002"


def test_bad_configs_are_refused(base, whole, tmp_path):
    with pytest.raises(ValueError, match="unknown hint dataset 'mnist'"):
        ControlDataConfig(dataset="mnist")
    with pytest.raises(ValueError, match="prompt_dropout must be in"):
        ControlNetTrainConfig(prompt_dropout=1.5)
    _, _, pipe, _ = whole
    with pytest.raises(ValueError, match=r"encode the hint 8x down but tiny-shapes's latents are 4x smaller"):
        train_controlnet(replace(TINY, hint_widths=(8, 16, 16, 16)), tmp_path / "a", pipe=pipe, progress=False)
    edges = replace(TINY, data=ControlDataConfig(dataset="fashion-mnist-edges", limit=8))
    with pytest.raises(ValueError, match="fashion-mnist-edges images are 32x32 with 1 channel"):
        train_controlnet(edges, tmp_path / "b", pipe=pipe, progress=False)
    run, _, _, _ = whole  # its checkpoints were written under another config
    with pytest.raises(CheckpointError, match=r"another config \(differing: \['lr'\]\)"):
        train_controlnet(replace(TINY, base=str(base), lr=3e-4), run, pipe=pipe, progress=False)


def test_an_edge_controlnet_on_fashion_mnist(tmp_path):
    """The 1-channel hints: Sobel edges of Fashion-MNIST on the shipped model, one step."""
    try:
        from ldmkit.data import load_fashion_mnist

        load_fashion_mnist("test", limit=1)
    except FileNotFoundError:
        pytest.skip("the dataset-fashion-mnist package is not installed")
    config = replace(CONTROLNET_PRESETS["fashion-mnist-edges"], data=ControlDataConfig(
        dataset="fashion-mnist-edges", limit=16, holdout=()), steps=1, batch_size=4, obedience_hints=2, sample_steps=1)
    summary = train_controlnet(config, tmp_path, progress=False)
    assert set(summary["obedience"]) == {"iou"} and 0 <= summary["obedience"]["iou"] <= 1
    pipe = Pipeline.from_pretrained("fashion-mnist-f4")
    assert pipe.load_controlnet(tmp_path / "controlnet").config.hint_channels == 1
    assert (tmp_path / "samples" / "step_000001.png").is_file()
