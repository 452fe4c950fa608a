"""Checkpoint folders and typed configs."""

import os
from dataclasses import dataclass

import pytest
import torch

from ldmkit.config import apply_overrides, from_dict, to_dict
from ldmkit.storage import CheckpointError, load_checkpoint, save_checkpoint
from ldmkit.storage import folder as checkpoint_module


@dataclass(frozen=True)
class Inner:
    channels: tuple[int, ...] = (1, 2)
    width: int | None = None


@dataclass(frozen=True)
class Outer:
    lr: float = 1e-4
    name: str = "x"
    inner: Inner = Inner()


def test_config_round_trip_keeps_tuples_and_nesting():
    config = Outer(lr=3e-4, inner=Inner(channels=(1, 2, 4), width=8))
    assert from_dict(Outer, to_dict(config)) == config


def test_config_unknown_keys_are_refused_with_the_known_ones():
    with pytest.raises(ValueError,
                       match=r"Outer.inner: unknown key\(s\) \['depth'\]; known keys: \['channels', 'width'\]"):
        from_dict(Outer, {"inner": {"depth": 3}})


def test_dotted_overrides():
    config = apply_overrides(
        Outer(), {"inner.channels": "[1, 2, 2]", "lr": "2e-4", "name": "run7", "inner.width": "null"}
    )
    assert config == Outer(lr=2e-4, name="run7", inner=Inner(channels=(1, 2, 2), width=None))
    with pytest.raises(ValueError, match=r"unknown config key 'inner.depth'"):
        apply_overrides(Outer(), {"inner.depth": "3"})


@dataclass(frozen=True)
class ConvNet:
    kind: str = "conv"
    width: int = 8


@dataclass(frozen=True)
class Transformer:
    kind: str = "transformer"
    depth: int = 2
    patch: tuple[int, int] = (2, 2)


@dataclass(frozen=True)
class Holder:
    net: ConvNet | Transformer = ConvNet()
    spare: ConvNet | None = None


def test_a_tagged_union_is_read_back_as_the_arm_its_kind_names():
    for value in (Holder(), Holder(net=Transformer(depth=5, patch=(4, 4)), spare=ConvNet(width=3))):
        assert from_dict(Holder, to_dict(value)) == value
    assert from_dict(Holder, {"net": {"depth": 3, "kind": "transformer"}}).net == Transformer(depth=3)
    assert from_dict(Holder, {"net": {"width": 3}}).net == ConvNet(width=3)  # no kind: the first arm's
    with pytest.raises(ValueError, match="unknown kind 'mlp'; choose one of"):
        from_dict(Holder, {"net": {"kind": "mlp"}})
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(Holder, {"net": {"kind": "transformer", "width": 8}})  # a ConvNet key on a Transformer


def test_checkpoint_round_trip_is_exact(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = {k: v.clone() * 2 for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    train_state = {"step": 7, "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "ckpt", {"net": net.state_dict(), "ema_net": ema}, {"a": [1, 2]}, train_state)
    states, config, loaded = load_checkpoint(tmp_path / "ckpt", with_train_state=True)
    assert config == {"a": [1, 2]}
    for key, value in net.state_dict().items():
        assert torch.equal(states["net"][key], value)
        assert torch.equal(states["ema_net"][key], ema[key])
    assert loaded["step"] == 7 and torch.equal(loaded["rng"], train_state["rng"])
    fresh = torch.optim.AdamW(net.parameters())
    fresh.load_state_dict(loaded["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_overwriting_replaces_the_folder_whole(tmp_path):
    save_checkpoint(tmp_path / "c", {"m": {"w": torch.ones(2)}}, {"v": 1}, {"step": 1})
    save_checkpoint(tmp_path / "c", {"m": {"w": torch.zeros(2)}}, {"v": 2})
    states, config, _ = load_checkpoint(tmp_path / "c")
    assert config == {"v": 2} and torch.equal(states["m"]["w"], torch.zeros(2))
    assert not (tmp_path / "c" / "train_state.pt").exists()
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no staging or old folders left behind


def test_a_failed_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "c", {"m": {"w": torch.ones(2)}}, {"v": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "_write_synced", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "c", {"m": {"w": torch.zeros(2)}}, {"v": 2})
    states, config, _ = load_checkpoint(tmp_path / "c")
    assert config == {"v": 1} and torch.equal(states["m"]["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_missing_and_corrupt_checkpoints_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder at"):
        load_checkpoint(tmp_path / "nope")
    save_checkpoint(tmp_path / "c", {"m": {"w": torch.ones(1000)}}, {"v": 1})
    weights = tmp_path / "c" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path / "c")


def test_train_state_with_code_in_it_is_refused(tmp_path):
    """A pickle that would run code when loaded is refused by weights_only=True."""
    save_checkpoint(tmp_path / "c", {"m": {"w": torch.ones(1)}}, {})

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"x": Evil()}, tmp_path / "c" / "train_state.pt")
    with pytest.raises(CheckpointError, match="could not be read safely"):
        load_checkpoint(tmp_path / "c", with_train_state=True)
    assert not (tmp_path / "pwned").exists()
