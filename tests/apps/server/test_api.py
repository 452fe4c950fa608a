"""The A1111-compatible API through FastAPI's TestClient: the same pixels as the Python API for
the same settings, every image's settings in its PNG and in `info`, the lists and options a
client reads, per-request LoRAs, and a clear 4xx for what cannot run."""

import base64
import json

import numpy as np
import pytest
import torch
from PIL import Image
from wire import b64_png, from_b64, pixels

from ldmkit.pipelines.infotext import parse_infotext

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a photo of a sneaker"


def test_txt2img_gives_the_pipelines_pixels_and_reports_each_seed(client, pipe):
    body = {"prompt": PROMPT, "seed": 11, "steps": 5, "sampler_name": "Euler a", "cfg_scale": 2.5,
            "batch_size": 2, "n_iter": 2, "restore_faces": False, "tiling": False, "s_churn": 0}  # + ignored fields
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_seeds"] == [11, 12, 13, 14] and info["seed"] == 11
    expected = [image for seed in (11, 13)  # n_iter batches of batch_size, as A1111 runs them
                for image in pipe.generate(PROMPT, num_images=2, steps=5, sampler="euler_a", guidance=2.5, seed=seed)]
    images = [from_b64(data) for data in r.json()["images"]]
    assert len(images) == 4
    for image, want, seed, text in zip(images, expected, info["all_seeds"], info["infotexts"]):
        assert np.array_equal(pixels(image), pixels(want))
        assert image.text["seed"] == str(seed) and image.text["parameters"] == text
        parsed = parse_infotext(text)
        assert (parsed["seed"], parsed["sampler"], parsed["steps"], parsed["guidance"]) == (seed, "euler_a", 5, 2.5)


def test_seed_minus_one_is_random_and_reported(client, pipe):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": -1, "steps": 3})
    seed = json.loads(r.json()["info"])["seed"]
    assert seed >= 0
    again = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": seed, "steps": 3})
    assert r.json()["images"] == again.json()["images"]


def test_img2img_and_inpainting_give_the_pipelines_pixels(client, pipe):
    source = pipe.generate(PROMPT, steps=4, seed=1)[0]
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (8, 8, 24, 24))
    common = {"prompt": "a photo of a boot", "seed": 3, "steps": 6, "sampler_name": "DDIM", "denoising_strength": 0.5,
              "init_images": ["data:image/png;base64," + b64_png(source)], "width": 32, "height": 32}
    r = client.post("/sdapi/v1/img2img", json=common)
    assert r.status_code == 200, r.text
    want = pipe.img2img(source, "a photo of a boot", strength=0.5, steps=6, sampler="ddim", seed=3)[0]
    assert np.array_equal(pixels(from_b64(r.json()["images"][0])), pixels(want))

    r = client.post("/sdapi/v1/img2img", json={**common, "mask": b64_png(mask), "mask_blur": 4})
    assert r.status_code == 200, r.text
    want = pipe.inpaint(source, mask, "a photo of a boot", strength=0.5, steps=6, sampler="ddim", seed=3)[0]
    got = from_b64(r.json()["images"][0])
    assert np.array_equal(pixels(got), pixels(want)) and got.text["task"] == "inpaint"


def test_karras_schedule_changes_the_timesteps_and_is_recorded(client):
    plain = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": 2, "steps": 6, "sampler_name": "Euler"})
    karras = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": 2, "steps": 6, "sampler_name": "Euler",
                                                    "scheduler": "Karras"})
    old_name = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": 2, "steps": 6,
                                                      "sampler_name": "Euler Karras"})
    assert karras.json()["images"] != plain.json()["images"]
    assert old_name.json()["images"] == karras.json()["images"]
    assert "Schedule type: Karras" in json.loads(karras.json()["info"])["infotexts"][0]


def test_png_info_reads_ldmkit_and_a1111_texts(client):
    image = from_b64(client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": 5, "steps": 3,
                                                            "negative_prompt": "blurry, dark"}).json()["images"][0])
    r = client.post("/sdapi/v1/png-info", json={"image": b64_png(image, image.text)}).json()
    assert r["parameters"]["prompt"] == PROMPT and r["parameters"]["negative_prompt"] == "blurry, dark"
    assert r["parameters"]["seed"] == 5 and r["items"]["model"] == "fashion-mnist-f4"
    a1111 = "a cat\nNegative prompt: ugly\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512"
    foreign = b64_png(Image.new("RGB", (8, 8)), {"parameters": a1111})
    r = client.post("/sdapi/v1/png-info", json={"image": foreign}).json()
    assert r["info"] == a1111
    assert r["parameters"] == {"prompt": "a cat", "negative_prompt": "ugly", "steps": 30, "sampler": "dpmpp_2m",
                               "spacing": "karras", "guidance": 7, "seed": 42, "size": "512x512"}


def test_lora_tag_applies_for_that_request_only(client):
    body = {"prompt": PROMPT, "seed": 4, "steps": 4}
    plain = client.post("/sdapi/v1/txt2img", json=body).json()
    tagged = client.post("/sdapi/v1/txt2img", json={**body, "prompt": PROMPT + " <lora:stripes:0.8>"}).json()
    after = client.post("/sdapi/v1/txt2img", json=body).json()
    assert tagged["images"] != plain["images"] and after["images"] == plain["images"]
    text = json.loads(tagged["info"])["infotexts"][0]
    assert parse_infotext(text)["prompt"] == PROMPT and "stripes.safetensors:0.8" in text
    r = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "<lora:nope:1>"})
    assert r.status_code == 422 and "nope" in r.json()["detail"] and "stripes" in r.json()["detail"]


def test_lists_a_client_reads(client):
    assert {s["name"] for s in client.get("/sdapi/v1/samplers").json()} >= {"Euler a", "DPM++ 2M", "DDIM"}
    assert [s["name"] for s in client.get("/sdapi/v1/schedulers").json()] == ["automatic", "karras"]
    assert "fashion-mnist-f4" in [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert [x["name"] for x in client.get("/sdapi/v1/loras").json()] == ["stripes"]
    assert list(client.get("/sdapi/v1/embeddings").json()["loaded"]) == ["thing"]
    assert [x["name"] for x in client.get("/sdapi/v1/hypernetworks").json()] == ["soft"]
    assert "fashion-mnist-x4" in [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    assert client.get("/sdapi/v1/memory").json()["ram"]["total"] > 0
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert "/sdapi/v1/txt2img" in client.get("/openapi.json").json()["paths"]


def test_options_take_back_what_they_gave_and_switch_models(client):
    options = client.get("/sdapi/v1/options").json()
    assert client.post("/sdapi/v1/options", json=options).status_code == 200
    r = client.post("/sdapi/v1/options", json={**options, "sd_model_checkpoint": "shapes"})
    assert r.status_code == 200 and client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "shapes"
    assert client.get("/ldmkit/v1/model").json()["name"] == "shapes"
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "../../etc/passwd"})
    assert r.status_code == 422 and "unknown model" in r.json()["detail"]
    client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "fashion-mnist-f4 [abc123]"})  # A1111's title form
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "fashion-mnist-f4"


def test_upscaler_runs_the_upscaler_model(client, pipe):
    small = pipe.generate(PROMPT, steps=3, seed=0)[0]
    r = client.post("/sdapi/v1/extra-single-image", json={"image": b64_png(small), "upscaler_1": "fashion-mnist-x4",
                                                          "upscaling_resize": 4})
    assert r.status_code == 200, r.text
    big = from_b64(r.json()["image"])
    assert big.size == (128, 128)
    down = np.asarray(big.convert("L").resize((32, 32), Image.BOX), dtype=float)
    assert np.abs(down - np.asarray(small, dtype=float)).mean() < 25  # the same picture, larger
    lanczos = from_b64(client.post("/sdapi/v1/extra-single-image", json={
        "image": b64_png(small), "upscaler_1": "Lanczos", "upscaling_resize": 2}).json()["image"])
    assert lanczos.size == (64, 64)


def test_gallery_serves_results_by_id(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a photo of a bag", "seed": 9, "steps": 3}).json()
    newest = client.get("/ldmkit/v1/gallery?count=1").json()[0]
    assert newest["id"] == r["ids"][0] and newest["settings"]["prompt"] == "a photo of a bag"
    png = client.get(newest["url"])
    assert png.headers["content-type"] == "image/png" and base64.b64encode(png.content).decode() == r["images"][0]


@pytest.mark.parametrize("body, words", [
    ({"steps": 1000}, "steps 1000 is over the limit"),
    ({"width": 33}, "multiple of 16"),
    ({"width": 4096}, "over the limit of 1024"),
    ({"batch_size": 10, "n_iter": 10}, "100 images is over the limit"),
    ({"prompt": "x" * 5000}, "4000 characters"),
    ({"sampler_name": "LMS"}, "unknown sampler 'LMS'"),
    ({"scheduler": "exponential"}, "unknown scheduler"),
    ({"steps": "many"}, "steps"),
    ({"cfg_scale": -1}, "cfg_scale"),
    ({"override_settings": {"sd_model_checkpoint": "nope"}}, "unknown model"),
])
def test_bad_requests_get_a_4xx_that_says_why(client, body, words):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **body})
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error", "detail", "body", "errors"} and words in r.json()["detail"]


@pytest.mark.parametrize("image, words", [("not base64!", "not valid base64"),
                                          ("aGVsbG8=", "not an image")])
def test_bad_uploads_are_refused(client, image, words):
    r = client.post("/sdapi/v1/img2img", json={"init_images": [image]})
    assert r.status_code == 422 and words in r.json()["detail"]


def test_preview_projects_the_latent_estimate(pipe):
    from ldmkit.apps.server.preview import fit_latent_to_rgb, preview_image

    weights = fit_latent_to_rgb(pipe.autoencoder, 1)
    z = pipe.generate(PROMPT, steps=6, seed=0, output="latent")
    preview = np.asarray(preview_image(z, weights, 1), dtype=float)  # at latent resolution
    decoded = torch.nn.functional.avg_pool2d(pipe.decode(z), 4)[0, 0].numpy()
    assert np.corrcoef(preview.ravel(), decoded.ravel())[0, 1] > 0.85


def test_gallery_keeps_the_newest_and_writes_outputs(tmp_path):
    from ldmkit.apps.server.jobs import Gallery

    gallery = Gallery(size=2, outputs=tmp_path)
    ids = [gallery.add(bytes([k]), {"seed": k}).id for k in range(3)]
    assert [r.id for r in gallery.newest(5)] == ids[:0:-1] and gallery.get(ids[0]) is None
    assert sorted(p.read_bytes() for p in tmp_path.glob("*.png")) == [b"\x00", b"\x01", b"\x02"]
