"""The HTTP side: an A1111-compatible subset of /sdapi/v1, ldmkit's own /ldmkit/v1 (the page's
model facts, outpainting, the gallery), and the page. Handlers check a request, hand it to the
worker and wait; the worker runs it (worker.py, jobs.py)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import threading
import time
from dataclasses import replace
from importlib import resources

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from safetensors import safe_open

from ... import __version__
from ...pipelines.core import Cancelled
from ...pipelines.infotext import A1111_SAMPLER, SAMPLER_NAMES, format_infotext, parse_infotext, sampler_from_a1111
from ...pipelines.request import GenerationRequest, run
from ...utils.images import png_bytes
from .a1111 import (
    ExtraSingleImagePayload,
    GenerationPayload,
    Img2ImgPayload,
    OutpaintPayload,
    PngInfoPayload,
    Txt2ImgPayload,
    controlnet_unit,
    decode_image,
    encode_png,
    extra_networks,
)
from .guard import Guard, error_body
from .jobs import Gallery, Generation
from .preview import previewer
from .registry import STEERING_FOLDERS, Registry
from .settings import ServerSettings
from .worker import QueueFull, Worker

STATIC = {"app.js": "text/javascript", "style.css": "text/css"}  # the only files served, by these names
STEERING_SETTINGS = ("controlnet", "control_scale", "classifier", "classifier_scale", "classifier_labels", "clip",
                     "clip_guidance", "rerank")  # Txt2ImgPayload's, as GenerationRequest names them
NAMED = {"controlnet": "controlnets", "classifier": "classifiers", "clip": "clips"}  # setting -> registry kind
SCHEDULERS = {"automatic": None, "karras": "karras"}
MAX_SEED = 2**63 - 2**20


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    limits = settings.limits
    registry = Registry(settings.models_dir, settings.model)
    model = next(name for name, path in registry.models.items()
                 if name == settings.model or str(path) == str(settings.model))
    worker = Worker(registry, model, settings.device, limits.queue_size, fast=settings.fast)
    worker.call(lambda w: w.pipeline(), "load")  # a model that cannot load stops the server at start
    gallery = Gallery(limits.gallery_size, settings.outputs)
    previews: dict[str, object] = {}  # model name -> its preview (tiny decoder or linear map), made when first watched
    preview_lock = threading.Lock()
    page = {name: resources.files(__package__).joinpath("static", name).read_bytes()
            for name in ("index.html", *STATIC)}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.stop()

    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN; /openapi.json is served
    app = FastAPI(title="ldmkit", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.worker, app.state.gallery, app.state.registry = worker, gallery, registry
    app.add_middleware(Guard, users=settings.auth, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return Response(error_body(error.status_code, str(error.detail)), error.status_code,
                        headers=error.headers, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        detail = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in error.errors())
        return Response(error_body(422, detail, "RequestValidationError"), 422, media_type="application/json")

    def run_job(work, label: str):
        """Queue `work` and wait: a full queue is a 503, a bad setting found by the model a 422."""
        try:
            return worker.call(work, label)
        except QueueFull as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "2"}) from None
        except (ValueError, KeyError, FileNotFoundError) as error:
            raise HTTPException(422, error.args[0] if error.args else str(error)) from None

    def check(payload: GenerationPayload) -> None:
        problems = []
        if len(payload.prompt) > limits.max_prompt_chars or len(payload.negative_prompt) > limits.max_prompt_chars:
            problems.append(f"prompts are limited to {limits.max_prompt_chars} characters")
        if payload.steps is not None and payload.steps > limits.max_steps:
            problems.append(f"steps {payload.steps} is over the limit of {limits.max_steps}")
        # every image sampled counts: each label's set (classifier_labels) and each rerank candidate
        labels = getattr(payload, "classifier_labels", None)
        factors = {"batch_size": payload.batch_size, "n_iter": payload.n_iter,
                   "rerank": getattr(payload, "rerank", 1), "classifier_labels": len(labels) if labels else 1}
        images = math.prod(factors.values())
        if images > limits.max_images:
            named = " x ".join(name for name, n in factors.items() if n != 1 or name in ("batch_size", "n_iter"))
            problems.append(f"{named} = {images} images is over the limit of {limits.max_images} a request")
        for side in ("width", "height"):
            value = getattr(payload, side)
            if value is not None and value > limits.max_side:
                problems.append(f"{side} {value} is over the limit of {limits.max_side} pixels")
        if problems:
            raise HTTPException(422, "; ".join(problems))

    def generation(payload: GenerationPayload, task: str, **task_settings) -> Generation:
        check(payload)
        if task != "txt2img" and a1111_controlnet(payload):
            raise HTTPException(422, f"ControlNet units run with txt2img in ldmkit, not {task}")
        prompt, networks = extra_networks(payload.prompt)
        sampler = payload.sampler_name or payload.sampler_index
        spacing = None
        try:
            if sampler is not None:
                sampler, spacing = sampler_from_a1111(sampler)
            if payload.scheduler is not None:
                if payload.scheduler.lower() not in SCHEDULERS:
                    raise ValueError(f"unknown scheduler {payload.scheduler!r}; choose one of {sorted(SCHEDULERS)}")
                spacing = SCHEDULERS[payload.scheduler.lower()] or spacing
            seed = payload.seed if 0 <= payload.seed <= MAX_SEED else random.randrange(2**32)
            request = GenerationRequest(prompt=prompt, negative_prompt=payload.negative_prompt, task=task,
                                        num_images=payload.batch_size, steps=payload.steps, sampler=sampler,
                                        guidance=payload.cfg_scale, seed=seed, **task_settings)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        model_override = payload.override_settings.get("sd_model_checkpoint")
        return Generation(request, payload.n_iter, _model_name(model_override) if model_override else None,
                          spacing, tuple(networks))

    def answer(payload: GenerationPayload, job: Generation) -> dict:
        results = run_job(lambda w: job(w, gallery), job.request.task)
        texts = [r.settings for r in results]
        seeds = [t["seed"] for t in texts] or [job.request.seed]
        first = texts[0] if texts else {}
        info = {"prompt": job.request.prompt, "all_prompts": [t["prompt"] for t in texts],
                "negative_prompt": job.request.negative_prompt,
                "all_negative_prompts": [t["negative_prompt"] for t in texts], "seed": seeds[0], "all_seeds": seeds,
                "subseed": -1, "all_subseeds": [-1] * len(seeds), "subseed_strength": 0,
                "width": _size(first)[0], "height": _size(first)[1],
                "sampler_name": A1111_SAMPLER.get(first.get("sampler"), first.get("sampler")),
                "cfg_scale": first.get("guidance"), "steps": first.get("steps"), "batch_size": payload.batch_size,
                "sd_model_name": first.get("model", worker.model_name), "denoising_strength": first.get("strength"),
                "index_of_first_image": 0, "infotexts": [t["parameters"] for t in texts],
                "interrupted": len(results) < payload.batch_size * payload.n_iter, "version": f"ldmkit {__version__}"}
        return {"images": [encode_png(r.png) for r in results] if payload.send_images else [],
                "parameters": payload.model_dump(), "info": json.dumps(info), "ids": [r.id for r in results]}

    def _model_name(name: str) -> str:
        name = re.sub(r"\s*\[[0-9a-f]+\]$", "", name)  # A1111's titles end in " [hash]"
        if name not in registry.models:
            raise HTTPException(422, f"unknown model {name!r}; the known ones: {sorted(registry.models)}")
        return name

    def upload(data: str, what: str) -> Image.Image:
        try:
            return decode_image(data, limits.max_upload_pixels, what)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None

    def a1111_controlnet(payload: GenerationPayload) -> dict:
        try:
            return controlnet_unit(payload.alwayson_scripts)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None

    def steering(payload: Txt2ImgPayload) -> tuple[dict, Image.Image | None]:
        """txt2img's ControlNet, classifier and CLIP settings (the ControlNet's also from an A1111
        unit), each name checked against the registry, and the decoded control image."""
        settings = {name: getattr(payload, name) for name in STEERING_SETTINGS}
        hint = payload.control_image
        unit = a1111_controlnet(payload)
        if unit:
            if payload.controlnet is not None or hint is not None:
                raise HTTPException(422, "give the ControlNet by controlnet and control_image, or by an "
                                         "alwayson_scripts unit, not both")
            settings |= {"controlnet": unit["controlnet"], "control_scale": unit["control_scale"]}
            hint = unit["control_image"]
        for name, kind in NAMED.items():
            if settings[name] is not None:
                try:
                    registry.path(kind, settings[name])
                except KeyError as error:
                    raise HTTPException(422, error.args[0]) from None
        if settings["controlnet"] is not None and hint is None:
            raise HTTPException(422, "controlnet needs control_image: its hint, a base64 PNG or JPEG")
        if settings["controlnet"] is None and hint is not None:
            raise HTTPException(422, "control_image needs a controlnet (see /controlnet/model_list)")
        return settings, None if hint is None else upload(hint, "control_image")

    # ---- generation --------------------------------------------------------------------------
    @app.post("/sdapi/v1/txt2img")
    def txt2img(payload: Txt2ImgPayload):
        settings, control_image = steering(payload)
        job = generation(payload, "txt2img", height=payload.height, width=payload.width, **settings)
        return answer(payload, replace(job, control_image=control_image))

    @app.post("/sdapi/v1/img2img")
    def img2img(payload: Img2ImgPayload):
        if not payload.init_images:
            raise HTTPException(422, "init_images: give one base64 image")
        image = upload(payload.init_images[0], "init_images[0]")
        size = (payload.width or image.width, payload.height or image.height)
        for side, value in zip(("width", "height"), size):
            if value > limits.max_side:
                raise HTTPException(422, f"{side} {value} is over the limit of {limits.max_side} pixels")
        if image.size != size:  # A1111's resize mode 0: just resize
            image = image.resize(size, Image.LANCZOS)
        mask = None
        if payload.mask:
            mask = upload(payload.mask, "mask").convert("L").resize(size, Image.NEAREST)
            if payload.inpainting_mask_invert:
                mask = mask.point(lambda v: 255 - v)
        task = "inpaint" if mask is not None else "img2img"
        job = generation(payload, task, strength=payload.denoising_strength)
        return answer(payload, replace(job, image=image, mask=mask))

    @app.post("/ldmkit/v1/outpaint")
    def outpaint(payload: OutpaintPayload):
        image = upload(payload.image, "image")
        for side in ("width", "height"):
            grown = getattr(image, side) + (payload.left + payload.right if side == "width" else
                                            payload.top + payload.bottom)
            if grown > limits.max_side:
                raise HTTPException(422, f"the outpainted {side} {grown} is over the limit of {limits.max_side}")
        job = generation(payload, "outpaint", left=payload.left, right=payload.right, top=payload.top,
                         bottom=payload.bottom)
        return answer(payload, replace(job, image=image))

    @app.post("/sdapi/v1/extra-single-image")
    def extra_single_image(payload: ExtraSingleImagePayload):
        image = upload(payload.image, "image")
        if payload.resize_mode == 1 and payload.upscaling_resize_w and payload.upscaling_resize_h:
            size = (payload.upscaling_resize_w, payload.upscaling_resize_h)
        else:
            size = (round(image.width * payload.upscaling_resize), round(image.height * payload.upscaling_resize))
        if max(size) > limits.max_side:
            raise HTTPException(422, f"the upscaled size {size[0]}x{size[1]} is over the limit of {limits.max_side}")
        name = payload.upscaler_1
        if name in ("None", "Lanczos", "Nearest"):
            out = image if name == "None" else image.resize(size, Image.LANCZOS if name == "Lanczos" else Image.NEAREST)
        elif name in registry.models and registry.task(name) == "upscaling":
            request = GenerationRequest(task="upscale")

            def work(w):
                pipe = w.pipeline(name)
                w.begin_batch(name, 0, 1, pipe.defaults.steps)
                return run(pipe, request, image=image, hook=w.hook)[0]

            try:
                out = run_job(work, "upscale")
            except Cancelled:
                raise HTTPException(409, "interrupted") from None
            if out.size != size:
                out = out.resize(size, Image.LANCZOS)
        else:
            raise HTTPException(422, f"unknown upscaler {name!r}; see /sdapi/v1/upscalers")
        return {"html_info": "", "image": encode_png(png_bytes(out))}

    # ---- PNG info ----------------------------------------------------------------------------
    @app.post("/sdapi/v1/png-info")
    def png_info(payload: PngInfoPayload):
        image = upload(payload.image, "image")
        chunks = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
        text = chunks.pop("parameters", None)
        if text is None and "prompt" in chunks:  # an ldmkit PNG from before the parameters chunk
            text = format_infotext({k: _json_or_text(v) for k, v in chunks.items()})
        return {"info": text or "", "items": chunks, "parameters": parse_infotext(text) if text else {}}

    # ---- progress and control ----------------------------------------------------------------
    @app.get("/sdapi/v1/progress")
    def progress(skip_current_image: bool = Query(False)):
        p = worker.snapshot()
        elapsed = time.time() - p.started if p.job else 0.0
        eta = elapsed / p.fraction - elapsed if p.fraction > 0 else 0.0
        current = None
        if not skip_current_image and p.x0 is not None and (pipe := worker.loaded(p.model)) is not None:
            with preview_lock:
                if p.model not in previews:
                    previews[p.model] = previewer(pipe)
            current = encode_png(png_bytes(previews[p.model](p.x0, max(1, 128 // pipe.config.image_size))))
        state = {"skipped": p.skipped, "interrupted": p.interrupted, "job": p.job, "job_count": p.job_count,
                 "job_timestamp": p.job_timestamp, "job_no": p.job_no, "sampling_step": p.step,
                 "sampling_steps": p.steps}
        return {"progress": p.fraction, "eta_relative": eta, "state": state, "current_image": current,
                "textinfo": None}

    @app.post("/sdapi/v1/interrupt")
    def interrupt():
        worker.interrupt()
        return {}

    @app.post("/sdapi/v1/skip")
    def skip():
        worker.skip()
        return {}

    # ---- options and lists -------------------------------------------------------------------
    def options_now() -> dict:
        return {"sd_model_checkpoint": worker.model_name, "sd_checkpoint_hash": registry.short_hash(worker.model_name),
                "samples_format": "png", "sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1,
                "eta_noise_seed_delta": 0, "live_previews_enable": True}

    @app.get("/sdapi/v1/options")
    def get_options():
        return options_now()

    @app.post("/sdapi/v1/options")
    def set_options(options: dict):
        """Takes back any key GET gave (others are ignored); sd_model_checkpoint switches models."""
        name = options.get("sd_model_checkpoint")
        if name is not None and name != worker.model_name:
            if not isinstance(name, str):
                raise HTTPException(422, "sd_model_checkpoint: a model name (see /sdapi/v1/sd-models)")
            name = _model_name(name)

            def switch(w):
                w.pipeline(name)
                w.model_name = name

            run_job(switch, "load")
        return None

    @app.get("/sdapi/v1/samplers")
    def samplers():
        return [{"name": name, "aliases": [ldmkit], "options": {}} for name, ldmkit in SAMPLER_NAMES.items()]

    @app.get("/sdapi/v1/schedulers")
    def schedulers():
        return [{"name": name, "label": name.capitalize(), "aliases": None,
                 "default_rho": 7 if name == "karras" else -1, "need_inner_model": False} for name in SCHEDULERS]

    @app.get("/sdapi/v1/sd-models")
    def sd_models():
        return [{"title": name, "model_name": name, "hash": registry.short_hash(name), "sha256": None,
                 "filename": name, "config": None} for name in registry.models]

    @app.post("/sdapi/v1/refresh-checkpoints")
    def refresh_checkpoints():
        registry.refresh()
        return None

    @app.post("/sdapi/v1/refresh-loras")
    def refresh_loras():
        registry.refresh()
        return None

    @app.get("/sdapi/v1/loras")
    def loras():
        return [{"name": n, "alias": n, "path": p.name, "metadata": {}} for n, p in registry.files["loras"].items()]

    @app.get("/sdapi/v1/hypernetworks")
    def hypernetworks():
        return [{"name": n, "path": p.name} for n, p in registry.files["hypernetworks"].items()]

    @app.get("/sdapi/v1/embeddings")
    def embeddings():
        loaded = {}
        for name, path in registry.files["embeddings"].items():
            with safe_open(path, "pt") as f:
                shape = f.get_slice(next(iter(f.keys()))).get_shape() if f.keys() else [0, 0]
            loaded[name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                            "shape": shape[-1], "vectors": shape[0] if len(shape) > 1 else 1}
        return {"loaded": loaded, "skipped": {}}

    @app.get("/controlnet/model_list")
    def controlnet_models():
        """sd-webui-controlnet's list, for its clients."""
        return {"model_list": list(registry.files["controlnets"])}

    @app.get("/controlnet/module_list")
    def controlnet_modules():
        return {"module_list": ["none"]}  # no preprocessors: a client sends the hint itself

    @app.get("/ldmkit/v1/steering")
    def steering_models():
        """The names txt2img's controlnet, classifier and clip take."""
        return {kind: list(registry.files[kind]) for kind in STEERING_FOLDERS}

    @app.get("/sdapi/v1/upscalers")
    def upscalers():
        plain = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                 for n in ("None", "Lanczos", "Nearest")]
        return plain + [{"name": n, "model_name": n, "model_path": None, "model_url": None, "scale": 4}
                        for n in registry.models if registry.task(n) == "upscaling"]

    @app.get("/sdapi/v1/scripts")
    def scripts():
        return {"txt2img": [], "img2img": []}

    @app.get("/sdapi/v1/memory")
    def memory():
        page_size = os.sysconf("SC_PAGE_SIZE")
        total, free = page_size * os.sysconf("SC_PHYS_PAGES"), page_size * os.sysconf("SC_AVPHYS_PAGES")
        cuda = {"error": "no CUDA device"}
        if torch.cuda.is_available():
            free_cuda, total_cuda = torch.cuda.mem_get_info()
            cuda = {"system": {"free": free_cuda, "used": total_cuda - free_cuda, "total": total_cuda}}
        return {"ram": {"free": free, "used": total - free, "total": total}, "cuda": cuda}

    # ---- ldmkit's own: the page's model facts and the gallery --------------------------------
    @app.get("/ldmkit/v1/model")
    def model_facts():
        pipe = run_job(lambda w: w.pipeline(), "model")
        multiple = pipe.autoencoder.config.downsampling_factor * pipe.net.config.downsampling_factor
        steps, sampler, guidance = pipe.resolve_settings()
        return {"name": worker.model_name, "image_size": pipe.config.image_size, "multiple": multiple,
                "channels": pipe.autoencoder.config.in_channels, "task": pipe.config.task,
                "defaults": {"steps": steps, "sampler": A1111_SAMPLER.get(sampler, sampler), "guidance": guidance},
                "class_names": pipe.class_names, "max_side": limits.max_side, "max_steps": limits.max_steps,
                "max_images": limits.max_images}

    @app.get("/ldmkit/v1/gallery")
    def gallery_list(count: int = Query(64, ge=1, le=1000)):
        return [{"id": r.id, "url": f"/ldmkit/v1/outputs/{r.id}", "settings": r.settings,
                 "infotext": r.settings.get("parameters", "")} for r in gallery.newest(count)]

    @app.get("/ldmkit/v1/outputs/{result_id}")
    def output(result_id: str):
        result = gallery.get(result_id) if re.fullmatch(r"[0-9a-f]{16}", result_id) else None
        if result is None:
            raise HTTPException(404, "no such result (outputs are served by the id the API gave)")
        return Response(result.png, media_type="image/png")

    # ---- the page ----------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse(page["index.html"])

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return Response(page[name], media_type=STATIC[name])

    return app


def _size(settings: dict) -> tuple[int | None, int | None]:
    width, _, height = str(settings.get("size", "")).partition("x")
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else (None, None)


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


