"""ControlNet, classifier guidance, CLIP guidance and reranking through the server, every model by
its registry name: the shipped shapes-control, and a models folder holding a ControlNet file
(A1111's ControlNet/), a tiny classifier, a tiny random CLIP and a tiny class-conditioned model.
The same pixels as the Python API, the settings in the PNG text, sd-webui-controlnet's unit, and
a 4xx that says why for unknown names, paths and settings generate refuses."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from wire import b64_png, from_b64, pixels

from ldmkit import Pipeline
from ldmkit.apps.server import Limits, ServerSettings, create_app
from ldmkit.apps.server.registry import Registry
from ldmkit.data.fashion_mnist import CLASS_NAMES
from ldmkit.data.fill_shapes import fill_shape
from ldmkit.io.controlnet_files import load_controlnet, save_controlnet_original
from ldmkit.model import MODELS_DIR, LatentDiffusionConfig, ModelParts
from ldmkit.model import classifier as classifier_module
from ldmkit.model.classifier import load_latent_classifier
from ldmkit.model.clip import CLIP
from ldmkit.nets import UNET_PRESETS, make_net
from ldmkit.nets.clip import SmallCLIP
from ldmkit.train.clip_config import CLIP_PRESETS
from ldmkit.train.noisy_classifier import train_noisy_classifier
from ldmkit.train.noisy_classifier_config import NOISY_CLASSIFIER_PRESETS
from ldmkit.utils.images import to_pil

pytestmark = pytest.mark.usefixtures("one_thread")
BAG = "a photo of a bag"
CIRCLE = "a blue circle"


@pytest.fixture(scope="module")
def steering_dir(pipe, tmp_path_factory):
    """A models folder: ControlNet/outline.safetensors (shapes-control as an original file),
    classifiers/tiny, clip/tiny-clip and a class-conditioned model, tiny-class."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("steering-models")
    save_controlnet_original(load_controlnet("shapes-control"), folder / "ControlNet" / "outline.safetensors")
    run = tmp_path_factory.mktemp("classifier-run")
    train_noisy_classifier(replace(NOISY_CLASSIFIER_PRESETS["tiny"], steps=2), run, progress=False)
    shutil.copytree(run / "model", folder / "classifiers" / "tiny")
    torch.manual_seed(0)  # an untrained CLIP of the tiny preset's shape: reranking needs only some scores
    CLIP.from_small_clip(SmallCLIP(CLIP_PRESETS["tiny"].clip), name="tiny-clip").save_pretrained(
        folder / "clip" / "tiny-clip")
    net = replace(UNET_PRESETS["tiny-uncond"], num_classes=11)
    Pipeline(ModelParts(make_net(net), pipe.autoencoder, LatentDiffusionConfig(net=net, conditioning="class"),
                        class_names=list(CLASS_NAMES), name="tiny-class")).save_pretrained(folder / "tiny-class")
    return folder


@pytest.fixture(scope="module")
def steering_client(steering_dir):
    limits = Limits(queue_size=4, max_images=8)
    settings = ServerSettings(model="fashion-mnist-f4", models_dir=steering_dir, limits=limits)
    app = create_app(settings)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def outline():
    hint, _, _ = fill_shape("blue", "circle", "bottom right", gen=torch.Generator().manual_seed(0))
    return to_pil(hint * 2 - 1)  # white outline on black


@pytest.fixture(scope="module")
def shapes():
    return Pipeline.from_pretrained("shapes")


def txt2img(client, **body):
    return client.post("/sdapi/v1/txt2img", json={"steps": 3, "seed": 1, "sampler_name": "Euler a", **body})


def test_the_lists_name_every_controlnet_classifier_and_clip(steering_client):
    steering = steering_client.get("/ldmkit/v1/steering").json()
    assert steering["controlnets"] == ["shapes-control", "outline"]  # shipped first, then ControlNet/
    shipped = sorted(p.name for p in (MODELS_DIR / "classifiers").iterdir() if (p / "config.json").is_file())
    assert steering["classifiers"] == [*shipped, "tiny"] and "tiny-clip" in steering["clips"]  # shipped first
    assert steering_client.get("/controlnet/model_list").json() == {"model_list": ["shapes-control", "outline"]}


def test_a_shipped_controlnet_by_name_gives_the_pipelines_pixels_and_is_recorded(steering_client, shapes, outline):
    r = txt2img(steering_client, prompt=CIRCLE, controlnet="shapes-control", control_image=b64_png(outline),
                control_scale=0.8, override_settings={"sd_model_checkpoint": "shapes"})
    assert r.status_code == 200, r.text
    shapes.load_controlnet("shapes-control")
    try:
        want = shapes.generate(CIRCLE, steps=3, seed=1, sampler="euler_a", control_image=outline, control_scale=0.8)
    finally:
        shapes.unload_controlnets()
    got = from_b64(r.json()["images"][0])
    assert np.array_equal(pixels(got), pixels(want[0]))
    assert got.text["controlnet"] == "shapes-control" and got.text["control_scale"] == "0.8"
    assert got.text["model"] == "shapes" and "controlnet: shapes-control" in got.text["parameters"]
    plain = txt2img(steering_client, prompt=CIRCLE, override_settings={"sd_model_checkpoint": "shapes"})
    assert plain.json()["images"] != r.json()["images"]  # and the ControlNet is off again after its request
    assert "controlnet" not in from_b64(plain.json()["images"][0]).text


def test_an_a1111_controlnet_unit_runs_as_the_same_fields(steering_client, outline):
    native = txt2img(steering_client, prompt=CIRCLE, controlnet="outline", control_image=b64_png(outline),
                     control_scale=0.7, override_settings={"sd_model_checkpoint": "shapes"})
    webuiapi = pytest.importorskip("webuiapi")
    unit = webuiapi.ControlNetUnit(image=outline, model="outline [0123abcd]", weight=0.7).to_dict()  # as it sends
    assert {"module", "resize_mode", "processor_res", "guidance_end", "control_mode", "pixel_perfect"} <= set(unit)
    unused = {"enabled": False, "model": "None", "input_image": ""}  # an empty unit of the extension's UI
    r = txt2img(steering_client, prompt=CIRCLE, override_settings={"sd_model_checkpoint": "shapes"},
                alwayson_scripts={"ControlNet": {"args": [unit, unused]}})
    assert r.status_code == 200, r.text
    assert r.json()["images"] == native.json()["images"]
    assert "controlnet: outline" in json.loads(r.json()["info"])["infotexts"][0]


@pytest.mark.parametrize("unit, words", [
    ({"module": "canny"}, "module='canny' is not supported"),
    ({"guidance_end": 0.5}, "guidance_end=0.5 is not supported"),
    ({"blend": 1}, "unknown key(s) ['blend']"),
    ({"image": None}, "give the hint as a base64 PNG"),
    ({"weight": "strong"}, "weight must be a number"),
])
def test_unsupported_controlnet_units_are_refused_naming_what_runs(steering_client, outline, unit, words):
    unit = {"image": b64_png(outline), "model": "outline", **unit}
    r = txt2img(steering_client, prompt=CIRCLE, alwayson_scripts={"controlnet": {"args": [unit]}})
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    r = txt2img(steering_client, prompt=CIRCLE, alwayson_scripts={"controlnet": {"args": [unit, unit]}})
    assert r.status_code == 422 and "2 enabled units" in r.json()["detail"]
    r = steering_client.post("/sdapi/v1/img2img", json={"init_images": [b64_png(outline)], "steps": 2,
                                                        "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert r.status_code == 422


def test_classifier_guidance_by_name_gives_the_pipelines_pixels(steering_client, steering_dir, pipe):
    r = txt2img(steering_client, prompt=BAG, classifier="tiny", classifier_scale=30, batch_size=2)
    assert r.status_code == 200, r.text
    want = pipe.generate(BAG, num_images=2, steps=3, seed=1, sampler="euler_a",
                         classifier=steering_dir / "classifiers" / "tiny", classifier_scale=30.0)
    got = [from_b64(data) for data in r.json()["images"]]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(got, want))
    assert got[0].text["classifier"] == "tiny" and got[0].text["classifier_scale"] == "30.0"
    plain = txt2img(steering_client, prompt=BAG, batch_size=2)
    assert plain.json()["images"] != r.json()["images"]
    labelled = txt2img(steering_client, prompt="", classifier="tiny", classifier_labels=[8, 3], classifier_scale=30)
    assert labelled.status_code == 200 and len(labelled.json()["images"]) == 2  # one image each label
    assert from_b64(labelled.json()["images"][0]).text["classifier_labels"] == "[8, 3]"


def test_reranking_and_clip_guidance_by_name(steering_client):
    r = txt2img(steering_client, prompt=BAG, steps=2, clip="tiny-clip", rerank=2)
    assert r.status_code == 200, r.text
    text = from_b64(r.json()["images"][0]).text
    assert text["clip"] == "tiny-clip" and text["rerank"] == "2"
    r = txt2img(steering_client, prompt=BAG, steps=2, clip="tiny-clip", clip_guidance=1.0)
    assert r.status_code == 200 and from_b64(r.json()["images"][0]).text["clip_guidance"] == "1.0"
    r = txt2img(steering_client, prompt=BAG, steps=2, rerank=2)  # a text model's default: clip-small
    if (MODELS_DIR / "clip-small" / "config.json").is_file():
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 422 and "this server has no clip-small" in r.json()["detail"]
        assert "tiny-clip" in r.json()["detail"]


@pytest.mark.parametrize("field, known", [("controlnet", "shapes-control"), ("classifier", "tiny"),
                                          ("clip", "tiny-clip")])
@pytest.mark.parametrize("name", ["nope", "../models/controlnets/shapes-control", "/etc/passwd"])
def test_unknown_names_and_paths_are_refused_naming_the_known_ones(steering_client, outline, field, known, name):
    extra = {"controlnet": {"control_image": b64_png(outline)}, "clip": {"rerank": 2}}.get(field, {})
    r = txt2img(steering_client, prompt=BAG, **{field: name}, **extra)
    assert r.status_code == 422, r.text
    assert f"unknown {field} {name!r}" in r.json()["detail"] and known in r.json()["detail"]


def test_rerank_without_a_clip_on_a_class_model_gets_generates_message(steering_client):
    r = txt2img(steering_client, prompt="bag", rerank=2, override_settings={"sd_model_checkpoint": "tiny-class"})
    assert r.status_code == 422 and "reranking a class-conditioned model needs a CLIP" in r.json()["detail"]


@pytest.mark.parametrize("body, words", [
    ({"controlnet": "outline"}, "controlnet needs control_image"),
    ({"control_image": "aGVsbG8="}, "control_image needs a controlnet"),
    ({"controlnet": "outline", "control_image": "aGVsbG8="}, "control_image: not an image"),
    ({"control_scale": 0.5}, "control_scale needs a controlnet"),
    ({"classifier_labels": [1]}, "need a classifier"),
    ({"clip": "tiny-clip"}, "clip is used by rerank and clip_guidance"),
    ({"classifier": "tiny", "prompt": "a photo of a cat"}, "names none of them"),  # generate's own check
    ({"rerank": 3, "batch_size": 3}, "batch_size x n_iter x rerank = 9 images is over the limit of 8"),
    ({"clip_guidance": -1}, "clip_guidance"),
])
def test_bad_steering_settings_get_a_4xx_that_says_why(steering_client, body, words):
    r = txt2img(steering_client, **{"prompt": BAG, **body})
    assert r.status_code == 422 and words in r.json()["detail"], r.text


def test_the_registry_lists_clip_small_only_once_it_is_shipped():
    registry = Registry()
    assert ("clip-small" in registry.files["clips"]) == (MODELS_DIR / "clip-small" / "config.json").is_file()
    assert "shapes-control" in registry.files["controlnets"]


def test_a_shipped_classifier_loads_by_its_name(steering_dir, tmp_path, monkeypatch):
    shutil.copytree(steering_dir / "classifiers" / "tiny", tmp_path / "classifiers" / "fashion-mnist")
    monkeypatch.setattr(classifier_module, "MODELS_DIR", tmp_path)  # as if models/classifiers/fashion-mnist
    monkeypatch.chdir(tmp_path)  # where no folder of that name is
    classifier = load_latent_classifier("fashion-mnist")
    assert classifier.name == "fashion-mnist" and classifier.class_names == list(CLASS_NAMES)
    with pytest.raises(ValueError, match=r"no classifier at nope: .*\['fashion-mnist'\]"):
        load_latent_classifier("nope")
