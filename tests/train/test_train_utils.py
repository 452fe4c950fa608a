"""EMA, logs, plots, checkpoint rotation and the choice of a checkpoint to resume."""

import torch

from ldmkit.storage import save_checkpoint
from ldmkit.train import EMA, JsonlLog, checkpoint_dir, latest_checkpoint, plot_losses, prune_checkpoints


def test_ema_with_decay_0_copies_the_model_and_follows_its_formula():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.0)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.equal(ema.shadow["weight"], net.weight)
    ema = EMA(net, decay=0.9)
    before = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.mul_(3.0)
    ema.update(net)
    torch.testing.assert_close(ema.shadow["weight"], 0.9 * before + 0.1 * net.weight.detach())
    target = torch.nn.Linear(3, 2)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])


def test_ema_warm_up_starts_at_the_weights_and_reaches_the_set_decay():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.999)
    assert ema.decay_at(0) == 0.1 and ema.decay_at(10**6) == 0.999
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, step=0)  # 10% of the old weights, 90% of the new
    torch.testing.assert_close(ema.shadow["weight"], net.weight.detach() - 0.1)


def test_jsonl_log_and_plot(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl")
    for step in range(1, 30):
        log.write({"step": step, "loss": 1.0 / step, "psnr": 20 + step * 0.1})
    log.truncate_after(20)
    records = log.read()
    assert [r["step"] for r in records] == list(range(1, 21))
    out = plot_losses(records, ["loss", "psnr", "absent"], tmp_path / "loss.png")
    assert out.stat().st_size > 1000


def test_rotation_keeps_the_newest_and_skips_incomplete(tmp_path):
    for step in (100, 200, 300):
        save_checkpoint(checkpoint_dir(tmp_path, step), {"m": {"w": torch.ones(1) * step}}, {}, {"step": step})
    (tmp_path / "checkpoints" / ".step-00000400.tmp-abc").mkdir()  # a killed write
    incomplete = checkpoint_dir(tmp_path, 500)
    save_checkpoint(incomplete, {"m": {"w": torch.ones(1)}}, {})  # no train state: not resumable
    assert latest_checkpoint(tmp_path).name == "step-00000300"
    prune_checkpoints(tmp_path, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000200", "step-00000300", "step-00000500"]


def test_resume_takes_options_added_since_at_their_defaults_and_refuses_other_configs(tmp_path):
    from dataclasses import replace

    import pytest

    from ldmkit.config import to_dict
    from ldmkit.storage import CheckpointError
    from ldmkit.train.checkpoints import resume_point
    from ldmkit.train.diffusion_config import DIFFUSION_PRESETS

    config = DIFFUSION_PRESETS["tiny"]
    written = to_dict(config)
    del written["parallel"], written["accumulate"]  # a run from before these options existed
    save_checkpoint(checkpoint_dir(tmp_path, 2), {"m": {"w": torch.ones(1)}}, {"train": written}, {"step": 2})
    found, _, train_state = resume_point(tmp_path, config)
    assert found.name == "step-00000002" and train_state["step"] == 2
    with pytest.raises(CheckpointError, match="another config"):
        resume_point(tmp_path, replace(config, lr=config.lr * 2))
    with pytest.raises(CheckpointError, match="another config"):
        resume_point(tmp_path, replace(config, accumulate=2))  # not the default the old run used
    longer = replace(config, steps=config.steps * 3, checkpoint_every=7)  # a run extended: allowed
    assert resume_point(tmp_path, longer)[2]["step"] == 2
    with pytest.raises(CheckpointError, match="past this run's 1 steps"):
        resume_point(tmp_path, replace(config, steps=1))
    written["no_such_option"] = 1
    save_checkpoint(checkpoint_dir(tmp_path, 4), {"m": {"w": torch.ones(1)}}, {"train": written}, {"step": 4})
    with pytest.raises(CheckpointError, match="cannot read"):
        resume_point(tmp_path, config)
