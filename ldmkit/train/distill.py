"""Latent consistency distillation (Luo et al. 2023, Algorithm 1): a few-step model from a trained
latent diffusion model, in its latent space.

Each step draws latents z0, a point t_{n+k} of the teacher's 50-point DDIM grid and a guidance
scale w, and noises z0 to x_{t_{n+k}}. The guided teacher takes one DDIM step to x_{t_n}
(the augmented PF-ODE solver of LCM eq. 8, w folded in). The online student f_theta maps
x_{t_{n+k}}, the target network f_theta^- (an EMA of the student) maps x_{t_n}, both through
the boundary-condition scalings (f(x, 0) = x), and the pseudo-Huber distance of the two is the
loss (LCM eq. 9). The student takes w as an input (guidance_embed_dim), so sampling needs one
network pass a step and no unconditional branch.

LCM-LoRA (Luo et al. 2023b): a LoRA on the teacher is the student; the guided teacher is the
base network without it; the target is the student itself under no_grad; no guidance input.
All randomness of a step comes from (seed, step): a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import from_dict, to_dict
from ..diffusion.consistency import boundary_scalings
from ..diffusion.gaussian import eps_from_x0, prediction_to_x0
from ..model import GenerationDefaults, ModelParts
from ..model.conditioner import NULL_PROMPT
from ..nets import make_net
from ..pipelines import Pipeline
from ..pipelines.core import folds_guidance
from ..storage import save_checkpoint
from .checkpoints import checkpoint_dir, prune_checkpoints, resume_point
from .diffusion import encode_dataset, load_captioned_images, preview_prompts, save_sample_grid
from .diffusion_config import DiffusionTrainConfig
from .distill_config import DistillConfig
from .ema import EMA
from .logging import JsonlLog, plot_losses
from .steps import fused_adam, learning_rate, step_generator


def per_sample_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of diffusion.consistency for each sample's t, shaped to broadcast over latents."""
    c_skip, c_out = boundary_scalings(t.double())
    return c_skip.float().view(-1, 1, 1, 1), c_out.float().view(-1, 1, 1, 1)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """mean of sqrt((a - b)^2 + c^2) - c: quadratic below c, linear above (LCM's loss d)."""
    return (((a.float() - b.float()) ** 2 + c**2).sqrt() - c).mean()


class Distiller:
    """The teacher, student and target of one run, and the loss of one step."""

    def __init__(self, config: DistillConfig, device: torch.device):
        self.config, self.device = config, device
        self.teacher = Pipeline.from_pretrained(config.teacher, device=device)
        if folds_guidance(self.teacher):
            raise ValueError(f"{config.teacher} already takes guidance as an input (a consistency model): "
                             "distil from the diffusion model it came from")
        if self.teacher.config.task != "generation":
            raise ValueError(f"{config.teacher} is a {self.teacher.config.task} model: distil a text-to-image one")
        self.teacher.net.requires_grad_(False)
        self.prediction = self.teacher.config.prediction
        self.alpha_bar = self.teacher.schedule.alpha_bar.float().to(device)
        self.skip = self.teacher.schedule.num_timesteps // config.original_steps
        if config.lora:
            from ..finetune.lora import LoRANetwork

            self.student = copy.deepcopy(self.teacher.net).requires_grad_(False)
            self.lora = LoRANetwork.create({"unet": self.student}, rank=config.lora_rank,
                                           targets=config.lora_targets).to(device)
            self.lora.attach({"unet": self.student})
            self.target = self.student  # LCM-LoRA's target: the student itself, under no_grad
            self.ema = None
        else:
            net_config = replace(self.teacher.net.config, guidance_embed_dim=config.guidance_embed_dim)
            self.student = make_net(net_config).to(device)
            missing = self.student.load_state_dict(self.teacher.net.state_dict(), strict=False).missing_keys
            assert missing == ["time_embedding.cond_proj.weight"], missing
            with torch.no_grad():  # w enters at zero: the student starts as the teacher's conditional branch
                self.student.time_embedding.cond_proj.weight.zero_()
            self.target = make_net(net_config).to(device).requires_grad_(False)
            self.ema = EMA(self.student, config.target_ema)
            self.ema.copy_to(self.target)
            self.lora = None

    @property
    def trainable(self):
        return self.lora.parameters() if self.lora is not None else self.student.parameters()

    def _net(self, net, x, t, cond, w):
        guidance = {} if self.lora is not None else {"guidance": w}
        out = net(x, t, **cond, **guidance)
        return prediction_to_x0(out, x, self.alpha_bar[t].view(-1, 1, 1, 1), self.prediction)

    def loss(self, z0: torch.Tensor, cond: dict, uncond: dict, gen: torch.Generator) -> torch.Tensor:
        c = self.config
        b = z0.shape[0]
        n = torch.randint(c.original_steps, (b,), generator=gen)
        t = ((n + 1) * self.skip - 1).to(self.device)  # a point of the DDIM grid ...
        s = (t - self.skip).clamp(min=0)  # ... and the one the solver steps to
        noise = torch.randn(z0.shape, generator=gen).to(self.device)
        w = (c.guidance_min + (c.guidance_max - c.guidance_min) * torch.rand(b, generator=gen)).to(self.device)
        a_t, a_s = self.alpha_bar[t].view(-1, 1, 1, 1), self.alpha_bar[s].view(-1, 1, 1, 1)
        x_t = a_t.sqrt() * z0 + (1 - a_t).sqrt() * noise

        c_skip_t, c_out_t = per_sample_scalings(t)
        prediction = c_skip_t * x_t + c_out_t * self._net(self.student, x_t, t, cond, w)
        with torch.no_grad():
            both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
            out = self.teacher.net(torch.cat([x_t, x_t]), torch.cat([t, t]), **both)  # (the base, for a LoRA)
            x0_c, x0_u = prediction_to_x0(out, torch.cat([x_t, x_t]), torch.cat([a_t, a_t]), self.prediction).chunk(2)
            gw = (w - 1).view(-1, 1, 1, 1)
            x0 = x0_c + gw * (x0_c - x0_u)  # classifier-free guidance in x0 (and so in eps)
            eps = eps_from_x0(x_t, x0, a_t)
            x_s = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps  # one DDIM step t -> s
            c_skip_s, c_out_s = per_sample_scalings(s)
            target = c_skip_s * x_s + c_out_s * self._net(self.target, x_s, s, cond, w)
        return pseudo_huber(prediction, target, c.huber_c)

    def update_target(self) -> None:
        if self.ema is not None:
            self.ema.update(self.student)
            self.ema.copy_to(self.target)

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        if self.lora is not None:
            return {"lora": self.lora.state_dict()}
        return {"unet": self.student.state_dict(), "ema_unet": self.ema.state_dict()}

    def load_weights(self, states: dict) -> None:
        if self.lora is not None:
            self.lora.load_state_dict(states["lora"])
            return
        self.student.load_state_dict(states["unet"])
        self.ema.load_state_dict(states["ema_unet"])
        self.ema.copy_to(self.target)

    def pipeline(self, name: str) -> Pipeline:
        """The distilled model as a pipeline: the target network's weights, LCM sampling defaults."""
        guidance = self.config.guidance if self.config.guidance is not None else self.teacher.defaults.guidance
        defaults = GenerationDefaults(guidance=guidance, sampler="lcm", steps=4)
        sampling = replace(self.teacher.config.sampling, original_inference_steps=self.config.original_steps)
        if self.lora is not None:
            return Pipeline(replace(self.teacher.parts, net=self.student, defaults=defaults, name=name,
                                    config=replace(self.teacher.config, sampling=sampling)))
        net = copy.deepcopy(self.target).eval()
        config = replace(self.teacher.config, net=net.config, sampling=sampling)
        return Pipeline(ModelParts(net, self.teacher.autoencoder, config, self.teacher.text_encoder,
                                   self.teacher.class_names, defaults, name, dict(self.teacher.meta)))


def distill(config: DistillConfig, run_dir: str | Path, device: str | torch.device = "cpu", resume: bool = True,
            progress: bool = True, max_steps: int | None = None) -> dict:
    """Distil, or resume distilling, `config.teacher` into run_dir/model (or run_dir/lora.safetensors)."""
    run_dir, device = Path(run_dir), torch.device(device)
    torch.manual_seed(config.seed)
    d = Distiller(config, device)
    latents, rows, table, null, prompts = _data(d.teacher, config, device)

    opt = fused_adam(d.trainable, lr=config.lr)
    log = JsonlLog(run_dir / "log.jsonl")
    point = resume_point(run_dir, config) if resume else None
    start, seconds_before = 0, 0.0
    if point is not None:
        found, states, train_state = point
        d.load_weights(states)
        opt.load_state_dict(train_state["optimizer"])
        start, seconds_before = train_state["step"], train_state["seconds"]
        log.truncate_after(start)
        print(f"resuming from {found} (step {start})")
    elif (run_dir / "log.jsonl").exists():
        (run_dir / "log.jsonl").unlink()
    end = config.steps if max_steps is None else min(config.steps, max_steps)
    t0 = time.perf_counter()

    def save_state(done: int) -> None:
        seconds = seconds_before + time.perf_counter() - t0
        train_state = {"step": done, "optimizer": opt.state_dict(), "seconds": seconds}
        meta = {"type": "distill-run", "train": to_dict(config)}
        save_checkpoint(checkpoint_dir(run_dir, done), d.weights(), meta, train_state)
        prune_checkpoints(run_dir, config.keep_checkpoints)

    bar = tqdm(range(start, end), initial=start, total=config.steps, desc="distill", disable=not progress)
    for step in bar:
        gen = step_generator(config.seed, step)
        index = torch.randint(len(latents), (config.batch_size,), generator=gen)
        cond = {k: v[rows[index]] for k, v in table.items()}
        uncond = {k: v[[null] * config.batch_size] for k, v in table.items()}
        for group in opt.param_groups:
            group["lr"] = learning_rate(config.lr, step, config.warmup_steps, config.steps)
        d.student.train()
        opt.zero_grad(set_to_none=True)
        loss = d.loss(latents[index], cond, uncond, gen)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(d.trainable), config.grad_clip or math.inf)
        opt.step()
        d.update_target()
        done = step + 1
        if done % config.log_every == 0 or done == end:
            speed = (done - start) * config.batch_size / (time.perf_counter() - t0)
            log.write({"step": done, "loss": loss.item(), "grad_norm": grad_norm.item(), "images_per_s": speed})
            bar.set_postfix(loss=f"{loss.item():.5f}", img_per_s=f"{speed:.0f}")
        if done % config.checkpoint_every == 0 or done == end:
            save_state(done)
        if done % config.sample_every == 0 or done == end:
            d.student.eval()
            save_sample_grid(d.pipeline(run_dir.name), prompts, run_dir / "samples" / f"step_{done:06d}.png", done)
    bar.close()
    records = log.read()
    plot_losses(records, ["loss", "grad_norm"], run_dir / "loss.png", title=run_dir.name)
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    summary = {"steps": end, "train_minutes": (seconds_before + time.perf_counter() - t0) / 60,
               "images_per_s": speeds[-1] if speeds else None}
    if end == config.steps:
        if config.lora:
            from ..finetune.lora_formats import save_lora

            summary["lora"] = str(save_lora(d.lora, run_dir / "lora.safetensors", metadata={
                "ldmkit_lcm_lora": "1", "teacher": config.teacher, "recommended": "--sampler lcm --steps 4 "
                f"--guidance {config.guidance if config.guidance is not None else 1.0}"}))
        else:
            d.pipeline(run_dir.name).save_pretrained(run_dir / "model", extra={
                "dataset": d.teacher.meta.get("dataset"), "train": d.teacher.meta.get("train"),
                "distill": to_dict(config), "training": summary})
    return summary


def _data(teacher: Pipeline, config: DistillConfig, device: torch.device):
    """(latents, caption row of each, conditioning table by row, the null row, preview prompts):
    the teacher's own training data, its conditioning computed once per distinct caption."""
    if "train" not in teacher.meta:
        raise ValueError(f"{config.teacher} does not record the data it was trained on (config.json 'train'): "
                         "distil a model trained by ldmkit")
    train = from_dict(DiffusionTrainConfig, teacher.meta["train"])
    train = replace(train, data=replace(train.data, limit=config.data_limit or train.data.limit))
    images, captions, _ = load_captioned_images(train, teacher.autoencoder.config.in_channels)
    latents = encode_dataset(teacher.autoencoder, images.to(device))
    vocabulary = sorted(set(captions) | {NULL_PROMPT})
    with torch.no_grad():
        table = teacher.encode_prompts(vocabulary)
    rows = torch.tensor([vocabulary.index(caption) for caption in captions])
    return latents, rows, table, vocabulary.index(NULL_PROMPT), preview_prompts(train, captions)
