"""benchmarks/cpu_engines.py at the tiny shape: every row is in the JSON, and the engines that
compute what ldmkit computes give its image (diffusers and OpenVINO f32 to float32 rounding).
OpenVINO is checked where installed (the "bench" extra); stable-diffusion.cpp loads SD v1.5's own
widths only, so at the tiny shape its rows must say why they were skipped."""

import dataclasses
import importlib.util
import json
import math

import numpy as np
import pytest

pytest.importorskip("diffusers")

from benchmarks import cpu_engines  # noqa: E402
from benchmarks.engines import SETTINGS, has_fast  # noqa: E402

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
FLOAT32_MAX_DIFF = 1e-4  # pixels in [0, 1]; the tiny runs agree to ~1e-6
LOW_PRECISION_PSNR = 30  # dB: bf16 rows (ldmkit fast, OpenVINO's default hint on bf16 CPUs)


def run(tmp_path, *args) -> dict:
    out = tmp_path / "cpu-engines.json"
    assert cpu_engines.main(["--config", "tiny", "--threads", "1", "--repeats", "1", "--out", str(out), *args]) == 0
    return json.loads(out.read_text())


def rows_by_key(report) -> dict:
    return {(r["engine"], r["setting"]): r for r in report["rows"]}


def test_parity_figures():
    image = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    assert cpu_engines.parity(image, image) == {"max abs diff": 0.0, "psnr db": math.inf}
    shifted = cpu_engines.parity(image + 0.01, image)
    assert shifted["max abs diff"] == pytest.approx(0.01, rel=1e-4)
    assert shifted["psnr db"] == pytest.approx(40, abs=0.01)


def test_torch_engines_every_row_and_parity(tmp_path, monkeypatch):
    # 3 DPM-Solver steps: the same code path as 20 (in-process, so the change reaches the engines)
    monkeypatch.setitem(SETTINGS, "dpm20", dataclasses.replace(SETTINGS["dpm20"], steps=3))
    report = run(tmp_path, "--in-process", "--engines", "ldmkit", "ldmkit-fast", "diffusers", "sdcpp-f32")
    rows = rows_by_key(report)
    assert set(rows) == {(e, s) for e in ("ldmkit", "ldmkit-fast", "diffusers", "sdcpp-f32") for s in SETTINGS}
    for setting in SETTINGS:
        for engine in ("ldmkit", "diffusers"):
            row = rows[engine, setting]
            assert row["status"] == "ok", row.get("note")
            assert row["median s"] > 0 and row["first call s"] > 0 and len(row["seconds"]) == 1
        assert rows["diffusers", setting]["parity"]["max abs diff"] < FLOAT32_MAX_DIFF
        fast = rows["ldmkit-fast", setting]
        if has_fast():
            assert fast["status"] == "ok", fast.get("note")
            assert fast["parity"]["psnr db"] > LOW_PRECISION_PSNR
        else:
            assert fast["status"] == "skipped" and "fast=" in fast["note"]
        sdcpp = rows["sdcpp-f32", setting]  # stable-diffusion.cpp builds SD v1.5's widths only
        assert sdcpp["status"] == "skipped"
        assert "widths" in sdcpp["note"]
    assert report["machine"]["threads"] == 1 and report["machine"]["cpu flags"] is not None
    assert set(report["settings"]["settings"]) == set(SETTINGS)


def test_fresh_process_row_records_its_memory(tmp_path):
    report = run(tmp_path, "--engines", "ldmkit", "--settings", "lcm4")
    (row,) = report["rows"]
    assert row["status"] == "ok", row.get("note")
    assert 0 < row["peak rss gib"] < 4 and row["load average"] and row["image stats"]["finite"]
    assert report["settings"]["fresh process per row"]


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (the bench extra)")
def test_openvino_rows_match_ldmkit(tmp_path):
    report = run(tmp_path, "--in-process", "--engines", "openvino-f32", "openvino-default", "--settings", "lcm4")
    rows = rows_by_key(report)
    assert report["openvino conversion"]["status"] == "ok"
    assert set(rows) == {("ldmkit", "lcm4"), ("openvino-f32", "lcm4"), ("openvino-default", "lcm4")}
    f32, default = rows["openvino-f32", "lcm4"], rows["openvino-default", "lcm4"]
    assert f32["status"] == default["status"] == "ok", (f32.get("note"), default.get("note"))
    assert f32["options"]["inference precision"].endswith("f32")
    assert f32["parity"]["max abs diff"] < FLOAT32_MAX_DIFF
    assert default["parity"]["psnr db"] > LOW_PRECISION_PSNR
    assert report["machine"]["openvino"]


def test_sdcpp_folder_names_the_text_encoder_as_sd_folders_do(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from benchmarks.engines import sdcpp_folder

    folder = tmp_path / "model"
    for part in ("unet", "vae", "text_encoder"):
        (folder / part).mkdir(parents=True)
    weight = torch.arange(6.0).reshape(2, 3)
    save_file({"embeddings.token_embedding.weight": weight, "text_model.final_layer_norm.bias": weight[0].clone()},
              folder / "text_encoder" / "model.safetensors")  # transformers 5's names, and one already prefixed
    out = sdcpp_folder(folder)
    tensors = load_file(out / "text_encoder" / "model.safetensors")
    assert set(tensors) == {"text_model.embeddings.token_embedding.weight", "text_model.final_layer_norm.bias"}
    assert torch.equal(tensors["text_model.embeddings.token_embedding.weight"], weight)
    assert (out / "unet").resolve() == (folder / "unet").resolve() and (out / "vae").is_symlink()
    assert sdcpp_folder(folder) == out  # made once
