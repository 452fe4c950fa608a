"""The `ldmkit` command: it parses arguments and calls the Python API, nothing more."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .evaluate_commands import add_evaluate_commands
from .family_commands import add_family_commands
from .finetune_commands import adapters, add_adapter_arguments, add_finetune_commands
from .guidance_commands import add_steering_arguments, steering_options
from .run_arguments import add_run_arguments, run_config
from .unclip_commands import add_unclip_arguments, add_unclip_commands


def _forward_demo(args: argparse.Namespace) -> None:
    from .demos import forward_diffusion_strip

    path = forward_diffusion_strip(args.out, photo=args.photo, size=args.size, seed=args.seed)
    print(f"wrote {path}: q(x_t | x_0) of '{args.photo}' over t for the linear, scaled-linear and cosine schedules")


def _train_autoencoder(args: argparse.Namespace) -> None:
    from ..train.autoencoder import train_autoencoder
    from ..train.autoencoder_config import TRAIN_PRESETS

    config = run_config(TRAIN_PRESETS, args)
    metrics = train_autoencoder(config, args.out, device=args.device, resume=not args.no_resume)
    if metrics.get("rank", 0) == 0:  # under torchrun, one process reports
        print(f"done: {args.out}/model; held-out "
              + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))


def _train(args: argparse.Namespace) -> None:
    from ..train.diffusion import train_diffusion
    from ..train.diffusion_config import DIFFUSION_PRESETS

    summary = train_diffusion(
        run_config(DIFFUSION_PRESETS, args), args.out, device=args.device, resume=not args.no_resume
    )
    if summary.get("rank", 0) == 0:  # under torchrun, one process reports
        print(f"done: {args.out}/model ({summary['steps']} steps, {summary['train_minutes']:.1f} min)")


def _distill(args: argparse.Namespace) -> None:
    from ..train.distill import distill
    from ..train.distill_config import DISTILL_PRESETS

    preset = args.preset or (f"{args.teacher}-lora" if args.lora else args.teacher)
    if preset not in DISTILL_PRESETS:  # a teacher without a preset of its own: the fashion-mnist recipe
        preset = "fashion-mnist-lora" if args.lora else "fashion-mnist"
    args.preset = preset
    args.set = [f"teacher={args.teacher}", *(["lora=true"] if args.lora else []), *args.set]
    summary = distill(run_config(DISTILL_PRESETS, args), args.out, device=args.device, resume=not args.no_resume)
    made = summary.get("lora") or f"{args.out}/model"
    print(f"done: {made} ({summary['steps']} steps, {summary['train_minutes']:.1f} min)")


def _distill_tiny_decoder(args: argparse.Namespace) -> None:
    from ..train.tiny_decoder import distill_tiny_decoder
    from ..train.tiny_decoder_config import TINY_DECODER_PRESETS

    args.set = [f"model={args.model}", *args.set]
    metrics = distill_tiny_decoder(run_config(TINY_DECODER_PRESETS, args), args.out, resume=not args.no_resume)
    print(f"done: {args.out}/model; PSNR vs the full decoder {metrics['psnr_vs_full_decoder']:.2f} dB, decode "
          f"{metrics['tiny_decode_images_per_s']:.0f} vs {metrics['full_decode_images_per_s']:.0f} images/s "
          f"(1 thread, {metrics['cpu']})")


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
FAST_MODES = {"auto": True, "compile": "compile", "openvino": "openvino", "openvino-f32": "openvino-f32",
              "inductor": "inductor"}  # --fast [MODE]


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .server import Limits, ServerSettings, create_app, parse_auth

    settings = ServerSettings(
        model=args.model, models_dir=args.models_dir, host=args.host, port=args.port, auth=parse_auth(args.api_auth),
        outputs=args.outputs, device=args.device, fast=FAST_MODES.get(args.fast, False),
        limits=Limits(max_side=args.max_side, queue_size=args.queue_size),
    )
    app = create_app(settings)
    print(f"ldmkit serve: http://{args.host}:{args.port}/ (model {settings.model}; Ctrl+C stops)")
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")


def _dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def _sd_options(args: argparse.Namespace) -> dict:
    """What reading a Stable Diffusion file or diffusers folder may need."""
    options = {"tokenizer": args.tokenizer, "prediction": args.prediction, "use_ema": args.use_ema or None}
    return {k: v for k, v in options.items() if v is not None}


def _generate(args: argparse.Namespace) -> None:
    """generate, img2img, inpaint, outpaint, upscale: one request, run, PNGs carrying its settings."""
    from ..pipelines.request import GenerationRequest, task_fields
    from .generate import generate_to_folder

    task = "txt2img" if args.command == "generate" else args.command
    request = GenerationRequest(task=task, **{name: getattr(args, name) for name in task_fields(task)})
    paths = generate_to_folder(
        request, args.out, model=args.model, device=args.device, grid=not args.no_grid,
        autoencoder=getattr(args, "autoencoder", None), dtype=_dtype(args.dtype),
        vae_tile=getattr(args, "vae_tile", None), adapters=adapters(args), image=getattr(args, "image", None),
        mask=getattr(args, "mask", None), fast=FAST_MODES.get(args.fast, False), **_control_options(args),
        **_sd_options(args),
        **(steering_options(args) if task == "txt2img" else {}), **_family_options(args),
    )
    print("\n".join(f"wrote {p}" for p in paths))


FAMILY_SETTINGS = ("temperature", "top_k", "top_p", "truncation", "prior_guidance", "prior_steps", "decoder_guidance")


def _family_options(args: argparse.Namespace) -> dict:
    """--temperature / --top-k / --top-p / --truncation / --prior-guidance / ..., where given: a family
    model's settings."""
    given = {name: getattr(args, name, None) for name in FAMILY_SETTINGS}
    given = {name: value for name, value in given.items() if value is not None}
    return {"family_sampling": given} if given else {}


def _add_family_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generative family models (GAN, DALL-E, unCLIP: ldmkit.family)")
    group.add_argument("--temperature", type=float, default=None, help="DALL-E: the codes' sampling temperature")
    group.add_argument("--top-k", type=int, default=None, help="DALL-E: draw among the k most likely codes")
    group.add_argument("--top-p", type=float, default=None, help="DALL-E: draw from the nucleus of mass p")
    group.add_argument("--truncation", type=float, default=None,
                       help="GAN: redraw entries of z beyond this (BigGAN's truncation trick)")
    add_unclip_arguments(group)


def _control_options(args: argparse.Namespace) -> dict:
    """--controlnet / --control-image / --control-scale as generate_to_folder's arguments."""
    nets, images, scales = getattr(args, "controlnet", []), getattr(args, "control_image", []), \
        getattr(args, "control_scale", [])
    if not nets and not images:
        if scales:
            raise ValueError("--control-scale needs --controlnet and --control-image")
        return {}
    if len(images) != len(nets):
        raise ValueError(f"give one --control-image per --controlnet: got {len(nets)} ControlNet(s) and "
                         f"{len(images)} control image(s)")
    one = (lambda values: values[0] if len(values) == 1 else values)
    control = {"control_image": one(images), "control_scale": one(scales) if scales else 1.0}
    return {"controlnets": nets, "control": control}


def _add_control_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controlnet", action="append", default=[], metavar="C",
                        help="a ControlNet (ldmkit or diffusers folder, original .pth/.safetensors); repeat to stack")
    parser.add_argument("--control-image", action="append", default=[], metavar="IMG",
                        help="the hint of each --controlnet, in the same order (resized to the image)")
    parser.add_argument("--control-scale", action="append", type=float, default=[], metavar="S",
                        help="how strongly each ControlNet steers (one for all, or one each; default 1)")


CLI_DEFAULTS = {"num_images": 4}  # a command line shows a few images; the API makes one


def _add_request_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    """An option for each setting of GenerationRequest that `task` takes (the prompt positional)."""
    import typing

    from ..pipelines.request import HELP, GenerationRequest, task_fields

    hints = typing.get_type_hints(GenerationRequest)
    for name in task_fields(task):
        if name == "prompt":
            continue
        if hints[name] is bool:  # a switch: --tiny-decoder
            parser.add_argument("--" + name.replace("_", "-"), action="store_true", help=HELP.get(name))
            continue
        kind = next(arm for arm in (int, float, str) if arm == hints[name] or arm in typing.get_args(hints[name]))
        default = CLI_DEFAULTS.get(name, GenerationRequest.__dataclass_fields__[name].default)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=HELP.get(name))


def _add_sampling_arguments(parser: argparse.ArgumentParser, model_help: str, task: str) -> None:
    """What every image-making command takes: the model, the request's settings, where to write."""
    parser.add_argument("--model", default="fashion-mnist", help=model_help)
    _add_request_arguments(parser, task)
    parser.add_argument("--out", default="outputs", help="folder for the PNGs and the grid")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-grid", action="store_true")
    parser.add_argument("--fast", nargs="?", const="auto", default=None, choices=FAST_MODES,
                        help="the fastest path this machine allows: bf16 weights on bf16 units (no value); "
                             "'compile' also compiles the UNet (OpenVINO if installed, else inductor; "
                             "pays off over many images); 'openvino-f32' compiles but keeps float32. "
                             "Default: exact float32")
    _add_sd_arguments(parser)
    add_adapter_arguments(parser)


def _convert(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ..io.stable_diffusion import save_diffusers_folder, save_single_file
    from ..pipelines import Pipeline

    pipe = Pipeline.from_pretrained(args.src, dtype=_dtype(args.dtype), **_sd_options(args))
    target = args.to or ("single-file" if str(args.dst).endswith(".safetensors") else "ldmkit")
    if target == "single-file":
        written = save_single_file(pipe.parts, args.dst)
    elif target == "diffusers":
        written = save_diffusers_folder(pipe.parts, args.dst)
    else:
        written = pipe.save_pretrained(args.dst)
    print(f"wrote {written} ({target}, {args.dtype}) from {Path(args.src)}")


def _add_sd_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", default=None,
                        help="folder with CLIP's vocab.json + merges.txt, for SD single files without one")
    parser.add_argument("--prediction", default=None, choices=("eps", "v", "x0"),
                        help="override what an SD v2 file predicts (default: inferred; v for v2)")
    parser.add_argument("--use-ema", action="store_true", help="the EMA UNet weights of an SD single file")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weights' precision")


def _train_classifier(args: argparse.Namespace) -> None:
    from ..train.classifier import train_fmnist_classifier

    metrics = train_fmnist_classifier(args.out, epochs=args.epochs)
    print(f"done: {args.out}; test accuracy {metrics['test_accuracy']:.4f} in {metrics['train_minutes']:.1f} min")


def _train_controlnet(args: argparse.Namespace) -> None:
    from ..train.controlnet import train_controlnet
    from ..train.controlnet_config import CONTROLNET_PRESETS

    summary = train_controlnet(run_config(CONTROLNET_PRESETS, args), args.out, device=args.device,
                               resume=not args.no_resume)
    obeyed = ", ".join(f"{k}={v:.3g}" for k, v in summary["obedience"].items())
    print(f"done: {summary.get('saved', args.out)} ({summary['steps']} steps, {summary['train_minutes']:.1f} min; "
          f"obedience on the held hints: {obeyed})")


def _train_noisy_classifier(args: argparse.Namespace) -> None:
    from ..train.noisy_classifier import train_noisy_classifier
    from ..train.noisy_classifier_config import NOISY_CLASSIFIER_PRESETS

    summary = train_noisy_classifier(run_config(NOISY_CLASSIFIER_PRESETS, args), args.out, device=args.device,
                                     resume=not args.no_resume)
    accuracy = ", ".join(f"t={t}: {a:.3f}" for t, a in summary["accuracy_by_t"].items())
    print(f"done: {summary.get('saved', args.out)} ({summary['steps']} steps, {summary['train_minutes']:.1f} min; "
          f"test accuracy by t: {accuracy})")


def _train_clip(args: argparse.Namespace) -> None:
    from ..train.clip import train_clip
    from ..train.clip_config import CLIP_PRESETS

    summary = train_clip(run_config(CLIP_PRESETS, args), args.out, device=args.device, resume=not args.no_resume)
    measured = ", ".join(f"{k}={summary[k]:.3f}" for k in ("shapes_top1", "fashion_zero_shot") if k in summary)
    print(f"done: {summary.get('saved', args.out)} ({summary['steps']} steps, {summary['train_minutes']:.1f} min; "
          f"{measured})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldmkit", description="Latent diffusion in plain PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("forward-demo", help="show the forward diffusion of a real photo")
    demo.add_argument("--out", default="outputs/forward_diffusion.png", help="PNG to write")
    demo.add_argument("--photo", default="astronaut", help="astronaut | coffee | chelsea | rocket")
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_forward_demo)

    from ..train.autoencoder_config import TRAIN_PRESETS
    from ..train.diffusion_config import DIFFUSION_PRESETS

    ae = commands.add_parser("train-autoencoder", help="train a first-stage autoencoder (AE, KL, VQ, +GAN)")
    add_run_arguments(ae, TRAIN_PRESETS, "fmnist-kl-f4", "--set model.kind=vq --set loss.gan_weight=0.1")
    ae.set_defaults(run=_train_autoencoder)

    train = commands.add_parser("train", help="train a latent diffusion model on a frozen autoencoder")
    add_run_arguments(train, DIFFUSION_PRESETS, "fashion-mnist", "--set model.conditioning=class --set batch_size=32")
    train.set_defaults(run=_train)

    from ..train.controlnet_config import CONTROLNET_PRESETS

    tc = commands.add_parser("train-controlnet",
                             help="train a ControlNet on a frozen model (fill-shapes outlines, Fashion-MNIST edges)")
    add_run_arguments(tc, CONTROLNET_PRESETS, "shapes-control", "--set base=models/my-model --set batch_size=16")
    tc.set_defaults(run=_train_controlnet)

    from ..train.distill_config import DISTILL_PRESETS

    dist = commands.add_parser("distill", help="latent consistency distillation: a 1-4 step model (or LCM-LoRA)")
    add_run_arguments(dist, DISTILL_PRESETS, None, "--set guidance_max=6 --set batch_size=32")
    dist.add_argument("--teacher", default="fashion-mnist", help="the model to distil (a shipped name or a folder)")
    dist.add_argument("--lora", action="store_true", help="LCM-LoRA: a LoRA file for the teacher instead of a model")
    dist.set_defaults(run=_distill)

    from ..train.tiny_decoder_config import TINY_DECODER_PRESETS

    tiny = commands.add_parser("distill-tiny-decoder",
                               help="distil a tiny (TAESD) decoder from a model's first stage, for fast decodes")
    add_run_arguments(tiny, TINY_DECODER_PRESETS, "default", "--set width=48 --set noise_max=0.8")
    tiny.add_argument("--model", default="fashion-mnist",
                      help="the teacher: a shipped model, a model folder or an autoencoder folder")
    tiny.set_defaults(run=_distill_tiny_decoder)

    clf = commands.add_parser("train-classifier", help="train the Fashion-MNIST metric network")
    clf.add_argument("--out", default="ldmkit/metrics/weights/fmnist-classifier")
    clf.add_argument("--epochs", type=int, default=6)
    clf.set_defaults(run=_train_classifier)

    from ..train.clip_config import CLIP_PRESETS
    from ..train.noisy_classifier_config import NOISY_CLASSIFIER_PRESETS

    tnc = commands.add_parser("train-noisy-classifier",
                              help="train a classifier of noisy latents, for classifier guidance")
    add_run_arguments(tnc, NOISY_CLASSIFIER_PRESETS, "fashion-mnist", "--set batch_size=64 --set steps=2000")
    tnc.set_defaults(run=_train_noisy_classifier)
    tclip = commands.add_parser("train-clip",
                                help="train a small CLIP on shapes, Fashion-MNIST or your captioned images")
    add_run_arguments(tclip, CLIP_PRESETS, "clip-small",
                       "--set data.datasets='[\"folder\"]' --set data.path=my-images")
    tclip.set_defaults(run=_train_clip)
    add_family_commands(commands)
    add_unclip_commands(commands)
    add_evaluate_commands(commands)

    model_help = (
        "a shipped model (fashion-mnist, shapes), a model folder, an SD .safetensors/.ckpt or a diffusers folder"
    )
    gen = commands.add_parser("generate", help="generate images from a prompt")
    gen.add_argument("prompt", nargs="?", default="", help='e.g. "a photo of a sneaker"; "" samples unconditionally')
    _add_sampling_arguments(gen, model_help, "txt2img")
    gen.add_argument("--autoencoder", default=None, help="decode with another first stage of the same latent space")
    gen.add_argument(
        "--vae-tile", type=int, default=None, help="decode in tiles of this many latent pixels (large images)"
    )
    _add_control_arguments(gen)
    add_steering_arguments(gen)
    _add_family_arguments(gen)
    gen.set_defaults(run=_generate)

    for name, help_text in (("img2img", "redraw an image towards a prompt (SDEdit)"),
                            ("inpaint", "repaint the white part of a mask"),
                            ("outpaint", "extend an image on any side"),
                            ("upscale", "super-resolution with an upscaler model (e.g. SD x4)")):
        task = commands.add_parser(name, help=help_text)
        task.add_argument("image", help="the input image (PNG, JPEG, ...)")
        if name == "inpaint":
            task.add_argument("mask", help="a mask image of the same size: white = repaint")
        task.add_argument("prompt", nargs="?", default="")
        _add_sampling_arguments(task, model_help, name)
        if name != "upscale":
            _add_control_arguments(task)
        task.set_defaults(run=_generate)

    conv = commands.add_parser("convert", help="convert between ldmkit, SD single-file and diffusers formats")
    conv.add_argument("src", help="an ldmkit model (name or folder), an SD .safetensors/.ckpt, or a diffusers folder")
    conv.add_argument("dst", help="a .safetensors file (SD single file) or a folder")
    conv.add_argument("--to", choices=("ldmkit", "single-file", "diffusers"), default=None,
                      help="output format (default: single-file for .safetensors, else ldmkit)")
    _add_sd_arguments(conv)
    conv.set_defaults(run=_convert)
    serve = commands.add_parser("serve", help="a web page and an AUTOMATIC1111-compatible HTTP API")
    serve.add_argument("--model", default="fashion-mnist", help=model_help)
    serve.add_argument("--models-dir", type=Path, default=None,
                       help="more models (folders, SD .safetensors) and Lora/, embeddings/, hypernetworks/")
    serve.add_argument("--host", default="127.0.0.1", help="another address than loopback needs --api-auth")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--api-auth", default=None, help="USER:PASS[,USER2:PASS2]: basic auth on every route")
    serve.add_argument("--outputs", type=Path, default=None, help="also write every result here as a PNG")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--fast", nargs="?", const="auto", default=None, choices=FAST_MODES,
                       help="load the diffusion models on the fast path, as generate --fast does")
    serve.add_argument("--max-side", type=int, default=1024, help="the largest width or height a request may ask")
    serve.add_argument("--queue-size", type=int, default=8, help="jobs that may wait; more are answered 503")
    serve.set_defaults(run=_serve)
    add_finetune_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as error:
        print(f"ldmkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
