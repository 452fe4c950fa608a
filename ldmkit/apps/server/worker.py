"""One thread owns the loaded models and runs one job at a time from a bounded queue; the HTTP
handlers only submit jobs, wait for them, and read the progress. Interrupt and skip act at the
next sampler step, through the pipelines' per-step hook."""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ...family.loading import family_kind
from ...io.controlnet_files import load_controlnet
from ...model.classifier import load_latent_classifier
from ...model.clip import CLIP
from ...pipelines import Pipeline
from ...pipelines.core import Cancelled, Step
from ...pipelines.guidance import DEFAULT_CLIP
from .registry import Registry


class QueueFull(Exception):
    """Every place in the queue is taken: the client should retry later (503)."""


class Skipped(Cancelled):
    """The current batch is skipped; the job goes on with its next one (A1111's skip)."""


@dataclass
class Job:
    work: Callable[[Worker], Any]  # runs in the worker thread
    label: str
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class Progress:
    """What /progress reports; written by the worker, read by the handlers (under the lock)."""

    job: str = ""
    model: str = ""  # whose first stage the preview projects through
    job_timestamp: str = "0"
    job_no: int = 0  # the batch (A1111: n_iter) being sampled
    job_count: int = 0
    step: int = 0  # sampler steps done in this batch
    steps: int = 0
    started: float = 0.0
    x0: torch.Tensor | None = None  # the latest clean-latent estimate, for the preview
    interrupted: bool = False
    skipped: bool = False

    @property
    def fraction(self) -> float:
        if not self.job or not self.job_count or not self.steps:
            return 0.0
        return min(1.0, (self.job_no + self.step / self.steps) / self.job_count)


class Worker:
    def __init__(self, registry: Registry, model: str, device: str = "cpu", queue_size: int = 8,
                 loaded_models: int = 2, loaded_steering: int = 4, fast: bool | str = False):
        self.registry, self.device = registry, torch.device(device)
        self.fast = fast  # Pipeline.from_pretrained's fast=, for the latent diffusion models
        self.model_name = model
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.lock = threading.Lock()
        self.progress = Progress()
        self._pipes: OrderedDict[str, Pipeline] = OrderedDict()
        self._loaded_models = loaded_models
        self._steering: OrderedDict[tuple[str, str, str], Any] = OrderedDict()  # ControlNets, classifiers, CLIPs
        self._loaded_steering = loaded_steering
        self._thread: threading.Thread | None = None
        self.start()

    def start(self) -> None:
        """Start the thread (again, after stop(): an app's lifespan may run more than once)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="ldmkit-worker", daemon=True)
            self._thread.start()

    # ---- the handlers' side ----------------------------------------------------------------
    def submit(self, work: Callable[[Worker], Any], label: str) -> Job:
        if self._thread is None or not self._thread.is_alive():
            raise QueueFull("the server is stopping")
        job = Job(work, label)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.queue.maxsize} jobs are waiting; retry later") from None
        return job

    def call(self, work: Callable[[Worker], Any], label: str):
        """Run `work(worker)` in the worker thread, wait for it, return its result or raise its error."""
        job = self.submit(work, label)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def interrupt(self) -> None:
        with self.lock:
            if self.progress.job:
                self.progress.interrupted = True

    def skip(self) -> None:
        with self.lock:
            if self.progress.job:
                self.progress.skipped = True

    def snapshot(self) -> Progress:
        with self.lock:
            return Progress(**vars(self.progress))

    def stop(self) -> None:
        """Interrupt the running job, fail the waiting ones, end the thread."""
        self.interrupt()
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.error = QueueFull("the server is stopping")
                job.done.set()
        if self._thread is not None and self._thread.is_alive():
            self.queue.put(None)
            self._thread.join()

    # ---- the worker's side -----------------------------------------------------------------
    def pipeline(self, name: str | None = None) -> Pipeline:
        """The named model (default: the current one), loaded on first use; the least recently
        used is unloaded when more than `loaded_models` are."""
        name = name or self.model_name
        if name not in self._pipes:
            path = self.registry.model_path(name)
            fast = self.fast if family_kind(path) is None else False  # a GAN or DALL-E has no fast path
            self._pipes[name] = Pipeline.from_pretrained(path, device=self.device, fast=fast)
            self._pipes[name].name = name
            while len(self._pipes) > self._loaded_models:
                self._pipes.popitem(last=False)
        self._pipes.move_to_end(name)
        return self._pipes[name]

    def steering(self, pipe: Pipeline, request) -> dict:
        """request.run's `loaded`: the ControlNet, classifier and CLIP `request` names, by their
        registry names, loaded on first use (the last few kept); a text model's default CLIP too."""
        names = {"controlnet": request.controlnet, "classifier": request.classifier, "clip": request.clip}
        if names["clip"] is None and (request.rerank > 1 or request.clip_guidance) and \
                pipe.config.conditioning == "text":  # generate's default, from this server's list
            clips = self.registry.files["clips"]
            if DEFAULT_CLIP not in clips:
                raise ValueError(f"{'rerank' if request.rerank > 1 else 'clip_guidance'} needs a CLIP and this "
                                 f"server has no {DEFAULT_CLIP}: name one in clip (the known ones: {sorted(clips)})")
            names["clip"] = DEFAULT_CLIP
        return {what: self._steering_model(what + "s", name, pipe) for what, name in names.items() if name is not None}

    def _steering_model(self, kind: str, name: str, pipe: Pipeline):
        path = self.registry.path(kind, name)
        key = (kind, name, pipe.name if kind == "controlnets" else "")  # a ControlNet's shape is read with its base
        if key not in self._steering:
            if kind == "controlnets":
                model = load_controlnet(path, base=pipe.net.config)
            elif kind == "classifiers":
                model = load_latent_classifier(path, self.device)
            else:
                model = CLIP.from_pretrained(path, self.device)
            model.name = name
            self._steering[key] = model
            while len(self._steering) > self._loaded_steering:
                self._steering.popitem(last=False)
        self._steering.move_to_end(key)
        return self._steering[key]

    def loaded(self, name: str) -> Pipeline | None:
        return self._pipes.get(name)

    def begin_batch(self, model: str, job_no: int, job_count: int, steps: int) -> None:
        with self.lock:
            p = self.progress
            p.model, p.job_no, p.job_count, p.steps = model, job_no, job_count, steps
            p.step, p.x0, p.skipped = 0, None, False

    def hook(self, step: Step) -> None:
        """The per-step hook of every sampling run: progress, the preview's latent, and the stop flags."""
        with self.lock:
            p = self.progress
            p.step, p.steps, p.x0 = step.index + 1, step.total, step.x0
            if p.interrupted:
                raise Cancelled("interrupted")
            if p.skipped:
                raise Skipped("skipped")

    @property
    def interrupted(self) -> bool:
        with self.lock:
            return self.progress.interrupted

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            with self.lock:
                self.progress = Progress(job=job.label, job_timestamp=time.strftime("%Y%m%d%H%M%S"),
                                         job_count=1, started=time.time())
            try:
                job.result = job.work(self)
            except BaseException as error:  # handed to the waiting handler, which answers for it
                job.error = error
            finally:
                with self.lock:
                    self.progress = Progress()
                job.done.set()
