"""Weights files of any format: read back exactly, unwrapped, never running code hidden in them."""

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ldmkit.storage import CheckpointError, weights_file
from ldmkit.storage.weights_file import detect_format, read_safetensors_metadata, read_weights


def _tensors():
    gen = torch.Generator().manual_seed(0)
    return {
        "unet.conv.weight": torch.randn(4, 3, 3, 3, generator=gen),
        "unet.conv.bias": torch.randn(4, generator=gen).half(),
        "vae.scale": torch.randn(2, 5, generator=gen).to(torch.bfloat16),
        "cond.position_ids": torch.arange(7),
        "scalar": torch.tensor(0.5, dtype=torch.float64),
    }


def _assert_same(got, want):
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


def _save(fmt, obj, path):
    if fmt == "safetensors":
        save_file(obj, path, metadata={"format": "pt", "modelspec.title": "tiny"})
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "torch-zip")
    return path


class _TouchOnUnpickle:
    """Unpickling this calls Path.touch(marker): harmless, but proof that code in a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# the file name says the opposite of the content: detection must read the bytes
@pytest.mark.parametrize(
    "fmt, name",
    [("safetensors", "x.ckpt"), ("torch-zip", "x.safetensors"), ("torch-legacy", "weights.bin")],
)
def test_round_trip_any_format_whatever_its_name(tmp_path, fmt, name):
    want = _tensors()
    path = _save(fmt, want, tmp_path / name)
    assert detect_format(path) == fmt
    got, metadata = read_weights(path, device=torch.device("cpu"))
    _assert_same(got, want)
    expected = {"format": "pt", "modelspec.title": "tiny"} if fmt == "safetensors" else {}
    assert metadata == expected


@pytest.mark.parametrize("fmt", ["torch-zip", "torch-legacy"])
def test_wrapped_checkpoints_are_unwrapped_scalars_become_metadata(tmp_path, fmt):
    want = _tensors()
    state_dict = {**want, "ema": {"decay": 0.999, "num_updates": torch.tensor(3)}, "junk": [1, 2]}
    lightning = {
        "state_dict": state_dict,
        "global_step": 470000,
        "epoch": 6,
        "optimizer_states": [{"lr": 1e-4}],
        "callbacks": {"ModelCheckpoint": {"best": None}},
    }
    got, metadata = read_weights(_save(fmt, lightning, tmp_path / "sd.ckpt"))
    _assert_same(got, want)  # nested non-tensor junk (and the tensor nested in it) dropped
    assert metadata == {"global_step": "470000", "epoch": "6"}
    for wrapper in ("model", "module"):
        got, metadata = read_weights(_save(fmt, {wrapper: want, "args": "run7"}, tmp_path / "m.pt"))
        _assert_same(got, want)
        assert metadata == {"args": "run7"}


@pytest.mark.parametrize("container", ["pickle", "torch-legacy", "torch-zip"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.ckpt"
    payload = {"unet.weight": torch.ones(2), "hyper": _TouchOnUnpickle(marker)}
    if container == "pickle":
        path.write_bytes(pickle.dumps(_TouchOnUnpickle(marker), protocol=2))  # torch's protocol
    else:
        _save(container, payload, path)
    assert not marker.exists()  # saving only records the call

    with pytest.raises(CheckpointError) as info:
        read_weights(path)
    message = str(info.value)
    assert str(path) in message and "was refused" in message and "Nothing in it was run" in message
    assert "GLOBAL getattr" in message  # torch's reason, naming the global (Path.touch via getattr)
    assert "convert it to safetensors" in message
    assert not marker.exists()

    # the control: the call the pickle records (what unpickling would run) does create the
    # marker, so the check above was not vacuous; made directly, nothing is unpickled
    call, args = _TouchOnUnpickle(marker).__reduce__()
    call(*args)
    assert marker.exists()


def test_a_checkpoint_with_hyperparameter_objects_is_refused_naming_the_class(tmp_path):
    lightning = {"state_dict": _tensors(), "hyper_parameters": argparse.Namespace(lr=1e-4)}
    path = _save("torch-zip", lightning, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match="was refused") as info:
        read_weights(path)
    assert "argparse.Namespace" in str(info.value)


def test_broken_or_foreign_files_are_named_with_what_was_found(tmp_path):
    def error(path):
        with pytest.raises(CheckpointError) as info:
            read_weights(path)
        assert str(path) in str(info.value)
        return str(info.value)

    good = _save("safetensors", {"w": torch.ones(6)}, tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[:-5])  # 24 bytes of tensor data, 19 left
    message = error(tmp_path / "cut.safetensors")
    assert "is truncated: the header describes 24 bytes of tensors but the file has 19" in message
    assert "re-download" in message
    (tmp_path / "cut_header.safetensors").write_bytes(good[:20])
    assert "is truncated: its safetensors header says" in error(tmp_path / "cut_header.safetensors")
    (tmp_path / "long.safetensors").write_bytes(good + b"\0" * 3)
    assert "3 unexpected bytes after its tensors" in error(tmp_path / "long.safetensors")

    (tmp_path / "random.ckpt").write_bytes(b"\x3f\xa2" + os.urandom(4094))
    message = error(tmp_path / "random.ckpt")
    assert "neither safetensors nor a PyTorch checkpoint: it starts with bytes 3f a2" in message
    assert "4096 bytes" in message
    (tmp_path / "page.safetensors").write_text("<!DOCTYPE html><html>Not Found</html>")
    message = error(tmp_path / "page.safetensors")
    assert "starts with the text '<!DOCTYPE html><html>Not Found</'" in message  # 32 bytes
    assert "HTML: a web page was saved" in message
    (tmp_path / "lfs.ckpt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:a\n")
    assert "Git LFS pointer" in error(tmp_path / "lfs.ckpt")

    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert "is empty" in error(tmp_path / "empty.ckpt")
    assert "no such file" in error(tmp_path / "missing.safetensors")
    assert "is a directory" in error(tmp_path)

    zipped = _save("torch-zip", {"w": torch.ones(6)}, tmp_path / "ok.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(zipped[: len(zipped) // 2])
    message = error(tmp_path / "cut.ckpt")
    assert "could not be read as a PyTorch checkpoint" in message
    assert "Nothing in it was run" in message


def test_safetensors_metadata_comes_from_the_header_alone(tmp_path, monkeypatch):
    path = _save("safetensors", _tensors(), tmp_path / "model.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(1)}, plain)

    def no_tensor_loading(*args, **kwargs):
        raise AssertionError("tensors were loaded")

    monkeypatch.setattr(weights_file, "load_file", no_tensor_loading)
    assert read_safetensors_metadata(path) == {"format": "pt", "modelspec.title": "tiny"}
    assert read_safetensors_metadata(plain) == {}
    ckpt = _save("torch-zip", _tensors(), tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="not safetensors"):
        read_safetensors_metadata(ckpt)
