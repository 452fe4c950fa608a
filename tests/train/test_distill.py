"""Latent consistency distillation: the student starts as the teacher, a tiny run lowers its
consistency loss, a resumed run equals an uninterrupted one, the LCM-LoRA file loads with --lora,
and the distilled folder samples with `lcm` by default."""

import dataclasses

import pytest
import torch

from ldmkit import Pipeline
from ldmkit.train.distill import Distiller, distill, pseudo_huber
from ldmkit.train.distill_config import DISTILL_PRESETS, DistillConfig
from ldmkit.train.steps import step_generator

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = DISTILL_PRESETS["tiny"]


def test_pseudo_huber_is_quadratic_below_c_and_linear_above():
    zero = torch.zeros(1)
    assert pseudo_huber(torch.tensor([1e-5]), zero, 1e-3).item() == pytest.approx(0.5 * 1e-10 / 1e-3, rel=1e-2)
    assert pseudo_huber(torch.tensor([10.0]), zero, 1e-3).item() == pytest.approx(10 - 1e-3, rel=1e-6)


def test_the_student_starts_as_the_teachers_conditional_branch():
    d = Distiller(TINY, torch.device("cpu"))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999, 259])
    cond = d.teacher.encode_prompts(["a photo of a bag", "a photo of a boot"])
    with torch.no_grad():
        student = d.student(x, t, **cond, guidance=torch.tensor([1.5, 4.0]))
        teacher = d.teacher.net(x, t, **cond)
    torch.testing.assert_close(student, teacher)


def test_a_tiny_distillation_lowers_its_consistency_loss():
    """One fixed batch (latents, t, noise, w) distilled again and again: the loss must fall."""
    config = dataclasses.replace(TINY, lr=3e-5)
    d = Distiller(config, torch.device("cpu"))
    z0 = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8
    cond = d.teacher.encode_prompts(["a photo of a sneaker"] * 8)
    uncond = d.teacher.encode_prompts([""] * 8)
    opt = torch.optim.Adam(d.trainable, lr=config.lr)
    losses = []
    for _ in range(40):
        loss = d.loss(z0, cond, uncond, step_generator(0, 0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        d.update_target()
        losses.append(loss.item())
    assert max(losses[-5:]) < 0.3 * losses[0], losses  # 0.026 -> about 0.003 here


def test_resume_is_exact_and_the_model_samples_with_lcm(tmp_path):
    config = dataclasses.replace(TINY, steps=12, checkpoint_every=6, sample_every=12)
    distill(config, tmp_path / "whole", progress=False)
    distill(config, tmp_path / "split", progress=False, max_steps=6)
    distill(config, tmp_path / "split", progress=False)
    a = Pipeline.from_pretrained(tmp_path / "whole" / "model")
    b = Pipeline.from_pretrained(tmp_path / "split" / "model")
    for (key, x), y in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(x, y), key
    assert (a.defaults.sampler, a.defaults.steps) == ("lcm", 4) and a.net.config.guidance_embed_dim == 128
    images = a.generate("a photo of a bag", num_images=2, seed=0)  # 4 passes, guidance folded in
    assert len(images) == 2 and (tmp_path / "whole" / "samples" / "step_000012.png").is_file()


def test_lcm_lora_writes_a_file_that_lora_loads(tmp_path):
    config = dataclasses.replace(TINY, lora=True, lora_rank=4, steps=6, checkpoint_every=6, sample_every=6,
                                 guidance=1.0)
    summary = distill(config, tmp_path / "lora", progress=False)
    pipe = Pipeline.from_pretrained("fashion-mnist-f4")
    plain = pipe.generate("a photo of a bag", sampler="lcm", steps=4, guidance=1.0, seed=0, output="tensor")
    pipe.load_lora(summary["lora"])
    adapted = pipe.generate("a photo of a bag", sampler="lcm", steps=4, guidance=1.0, seed=0, output="tensor")
    assert not torch.allclose(plain, adapted)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="1 <= min <= max"):
        DistillConfig(guidance_min=4, guidance_max=2)
    d = Distiller(TINY, torch.device("cpu"))
    with pytest.raises(ValueError, match="already takes guidance"):
        Distiller(dataclasses.replace(TINY, teacher=str(_saved(d))), torch.device("cpu"))


def _saved(d: Distiller):
    import tempfile

    folder = tempfile.mkdtemp()
    return d.pipeline("lcm").save_pretrained(folder)
