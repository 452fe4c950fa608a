"""The ControlNet commands end to end on a tiny base: train-controlnet, generate with
--controlnet / --control-image / --control-scale (the PNG text records the control),
evaluate-controlnet's JSON, and bad input named without a traceback."""

import json

import pytest
import torch
from controlnet_models import tiny_shapes_model
from PIL import Image

from ldmkit.apps.cli import main
from ldmkit.data.fill_shapes import fill_shape
from ldmkit.io.controlnet_files import save_controlnet
from ldmkit.nets import UNET_PRESETS, UNet
from ldmkit.nets.controlnet import ControlNet
from ldmkit.utils.images import to_pil

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(base folder, ControlNet folder, a hint PNG): `ldmkit train-controlnet --preset tiny`."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    base = tiny_shapes_model(root / "tiny-shapes")
    assert main(["train-controlnet", "--preset", "tiny", "--out", str(root / "run"), "--set", f"base={base}",
                 "--steps", "2"]) == 0
    hint, _, _ = fill_shape("blue", "circle", "top right", gen=torch.Generator().manual_seed(0))
    to_pil(hint * 2 - 1).save(root / "outline.png")
    return base, root / "run" / "controlnet", root / "outline.png"


def test_train_then_generate_with_the_controlnet(trained, tmp_path):
    base, controlnet, hint = trained
    assert (controlnet / "config.json").is_file() and (controlnet.parent / "training.png").is_file()
    args = ["generate", "a blue circle", "--model", str(base), "--steps", "2", "--num-images", "2",
            "--out", str(tmp_path)]
    assert main([*args, "--controlnet", str(controlnet), "--control-image", str(hint), "--control-scale", "0.7"]) == 0
    text = Image.open(tmp_path / "00000_seed0.png").text
    assert text["controlnet"] == "controlnet" and text["control_scale"] == "0.7"
    assert text["control_image"] == str(hint) and "controlnet: controlnet" in text["parameters"]
    assert main([*args, "--controlnet", str(controlnet), "--control-image", str(hint), "--control-scale", "0"]) == 0
    assert main(args) == 0  # scale 0 is the base, bit for bit; and no ControlNet, no control text
    scale0, plain = Image.open(tmp_path / "00002_seed0.png"), Image.open(tmp_path / "00004_seed0.png")
    assert scale0.tobytes() == plain.tobytes() and "controlnet" not in plain.text


def test_evaluate_controlnet_writes_json(trained, tmp_path):
    base, controlnet, _ = trained
    out = tmp_path / "eval.json"
    assert main(["evaluate-controlnet", "--model", str(base), "--controlnet", str(controlnet), "--size", "1",
                 "--steps", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dataset"] == "fill-shapes" and result["hints"] == 48 and result["controlnet_step"] == 2
    for side in ("controlnet", "base_alone"):
        scores = result[side]
        assert {"quadrant", "iou", "colour", "shape", "all", "top_left", "bottom_right", "held_out", "seen"} <= set(
            scores)
        assert all(0 <= scores[k] <= 1 for k in ("quadrant", "iou", "colour", "shape", "all"))
        assert scores["held_out"]["quadrant"] is not None


def test_bad_control_input_is_named(trained, tmp_path, capsys):
    base, controlnet, hint = trained
    args = ["generate", "a blue circle", "--model", str(base), "--steps", "1", "--out", str(tmp_path)]
    assert main([*args, "--controlnet", str(controlnet), "--control-image", str(tmp_path / "nope.png")]) == 2
    assert "no control image file at" in capsys.readouterr().err
    assert main([*args, "--controlnet", str(tmp_path / "missing"), "--control-image", str(hint)]) == 2
    assert "no ControlNet at" in capsys.readouterr().err
    assert main([*args, "--controlnet", str(controlnet)]) == 2
    assert "one --control-image per --controlnet" in capsys.readouterr().err
    other = ControlNet.from_unet(UNet(UNET_PRESETS["tiny"]), hint_widths=(8, 16, 16))  # context 32, not 384
    save_controlnet(other, tmp_path / "other-base")
    assert main([*args, "--controlnet", str(tmp_path / "other-base"), "--control-image", str(hint)]) == 2
    assert "was made for another base" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))  # nothing was written
