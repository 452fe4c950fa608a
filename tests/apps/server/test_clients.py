"""The real clients over a real socket: the PyPI client `webuiapi` (what bots, scripts and chat
front ends use to drive A1111) against a server on 127.0.0.1, and eight clients at once."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image
from wire import from_b64, pixels

webuiapi = pytest.importorskip("webuiapi")
pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a photo of a sneaker"


@pytest.fixture(scope="module")
def api(live_server):
    host, port = live_server[0].removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port))


def test_webuiapi_txt2img_and_img2img_give_the_pipelines_pixels(api, pipe):
    result = api.txt2img(prompt=PROMPT, negative_prompt="blurry", seed=7, steps=5, cfg_scale=3, width=32, height=32,
                         sampler_name="Euler a", batch_size=2)
    want = pipe.generate(PROMPT, negative_prompt="blurry", num_images=2, steps=5, sampler="euler_a", guidance=3,
                         seed=7)
    assert [pixels(i).tolist() for i in result.images] == [pixels(i).tolist() for i in want]
    assert result.info["all_seeds"] == [7, 8]

    source = result.images[0]
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (0, 0, 16, 32))
    edited = api.img2img(images=[source], prompt="a photo of a boot", seed=3, steps=6, denoising_strength=0.6,
                         sampler_name="DDIM", cfg_scale=3, width=32, height=32)
    want = pipe.img2img(source, "a photo of a boot", strength=0.6, steps=6, sampler="ddim", guidance=3, seed=3)[0]
    assert np.array_equal(pixels(edited.image), pixels(want))
    inpainted = api.img2img(images=[source], mask_image=mask, prompt="a photo of a boot", seed=3, steps=6,
                            denoising_strength=1.0, sampler_name="DDIM", cfg_scale=3, width=32, height=32)
    want = pipe.inpaint(source, mask, "a photo of a boot", strength=1.0, steps=6, sampler="ddim", guidance=3,
                        seed=3)[0]
    assert np.array_equal(pixels(inpainted.image), pixels(want))


def test_webuiapi_png_info_round_trip(api):
    image = api.txt2img(prompt=PROMPT, seed=21, steps=3, width=32, height=32, cfg_scale=2).image
    info = api.png_info(image)
    assert info.info == image.info["parameters"]
    assert info.json["parameters"]["seed"] == 21 and info.json["parameters"]["prompt"] == PROMPT
    assert api.util_get_current_model() == "fashion-mnist-f4"
    assert "Euler a" in api.util_get_sampler_names()


def start_long_job(api, n_iter: int):
    """A 150-step txt2img of n_iter batches in a thread, returned once it is sampling:
    (thread, dict that gets the result under "r")."""
    results = {}
    job = threading.Thread(target=lambda: results.update(r=api.txt2img(
        prompt=PROMPT, seed=1, steps=150, n_iter=n_iter, width=32, height=32)))
    job.start()
    deadline = time.time() + 60
    while api.get_progress()["state"]["sampling_step"] < 2:
        assert time.time() < deadline and job.is_alive(), "the job never started sampling"
        time.sleep(0.02)
    return job, results


def test_interrupt_stops_a_job_mid_way(api, live_server):
    job, results = start_long_job(api, n_iter=8)
    progress = api.get_progress()
    assert progress["state"]["job"] == "txt2img" and 0 < progress["progress"] < 1
    api.interrupt()
    job.join(30)
    assert not job.is_alive()
    assert len(results["r"].images) < 8 and results["r"].info["interrupted"]
    assert api.get_progress()["state"]["job"] == ""  # idle again, and it takes the next job
    assert len(api.txt2img(prompt=PROMPT, seed=1, steps=2, width=32, height=32).images) == 1


def test_skip_drops_the_current_batch_and_goes_on(api):
    job, results = start_long_job(api, n_iter=3)
    assert api.get_progress()["state"]["job_no"] == 0
    api.skip()
    job.join(60)
    assert results["r"].info["all_seeds"] == [2, 3]  # batch 0 (seed 1) skipped, the others made


def test_preview_is_made_while_someone_watches(live_server):
    base = live_server[0]
    done = threading.Event()
    seen = []

    def watch():
        while not done.is_set():
            r = requests.get(f"{base}/sdapi/v1/progress", params={"skip_current_image": "false"}).json()
            if r["current_image"]:
                seen.append(from_b64(r["current_image"]))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    requests.post(f"{base}/sdapi/v1/txt2img", json={"prompt": PROMPT, "steps": 120, "seed": 0, "n_iter": 2})
    done.set()
    watcher.join()
    assert seen and seen[0].size == (128, 128)


def test_eight_clients_at_once_each_get_their_own_results(live_server):
    """8 clients x 3 requests on a queue of 3: every job answered (a 503 is retried after its
    Retry-After), none lost or mixed up: each result carries its own request's seed and prompt."""
    base = live_server[0]
    refused = []

    def client(k: int) -> list[tuple[str, int, dict]]:
        answers = []
        for j in range(3):
            prompt, seed = f"a photo of a {['bag', 'boot', 'shirt', 'dress'][k % 4]} {k}-{j}", 1000 * k + j
            while True:
                r = requests.post(f"{base}/sdapi/v1/txt2img", json={"prompt": prompt, "seed": seed, "steps": 8})
                if r.status_code != 503:
                    break
                refused.append(int(r.headers["Retry-After"]))
                time.sleep(0.05)
            assert r.status_code == 200, r.text
            answers.append((prompt, seed, from_b64(r.json()["images"][0]).text))
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [a for batch in pool.map(client, range(8)) for a in batch]
    assert len(answers) == 24
    for prompt, seed, text in answers:
        assert text["prompt"] == prompt and text["seed"] == str(seed)
    assert refused and all(after > 0 for after in refused)  # the queue filled and said so
