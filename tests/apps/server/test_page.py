"""The `ldmkit serve` page in a real browser (Debian's chromium through Playwright) against the
real server and the shipped 32 px fashion-mnist-f4 model: txt2img, inpainting with a mask drawn by
the mouse, PNG info, the gallery's restore. LDMKIT_SCREENSHOT=1 also writes the README's
screenshot, docs/images/server-page.png."""

import base64
import io
import json
import os
from pathlib import Path

import pytest
from browser import require_browser
from PIL import Image

require_browser()  # the page's tests skip, saying what to install, where Chromium or Playwright is missing

ROOT = Path(__file__).resolve().parents[3]
PROMPT = "a photo of a sneaker"
TIMEOUT_MS = 120_000  # one generation of 4 steps takes seconds; a busy machine gets slack


@pytest.fixture(scope="module")
def server(live_server):
    return live_server[0]


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, elsewhere = [], []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda r: None if r.url.startswith((server + "/", "data:")) else elsewhere.append(r.url))
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    page.close()
    assert not errors, f"the page's script failed: {errors}"
    assert not elsewhere, f"the page loaded from elsewhere than its server: {elsewhere}"


def post_of(response) -> dict:
    return json.loads(response.request.post_data)


def generate(page, path: str):
    """Click generate and wait for the request to `path`; its JSON body and the response."""
    with page.expect_response(lambda r: r.url.endswith(path), timeout=TIMEOUT_MS) as answer:
        page.click("#generate")
    response = answer.value
    assert response.ok, response.text()
    page.wait_for_selector("#generate:enabled", timeout=TIMEOUT_MS)
    return post_of(response), response.json()


def test_txt2img_png_info_and_gallery(page, server, tmp_path):
    assert page.input_value("#steps") == "20"  # the model's defaults came in
    assert page.input_value("#sampler") == "DPM++ 2M"
    page.fill("#prompt", PROMPT)
    page.fill("#steps", "4")
    page.fill("#seed", "7")
    page.fill("#batch-size", "4")
    sent, answer = generate(page, "/sdapi/v1/txt2img")
    assert (sent["prompt"], sent["steps"], sent["seed"], sent["width"], sent["height"]) == (PROMPT, 4, 7, 32, 32)
    assert (sent["sampler_name"], sent["scheduler"]) == ("DPM++ 2M", "automatic")
    assert (sent["batch_size"], sent["n_iter"]) == (4, 1)

    result = page.locator("#results img").first
    result.wait_for()
    assert page.locator("#results img").count() == len(answer["images"]) == 4
    assert result.evaluate("img => img.naturalWidth") == 32
    assert result.evaluate("img => img.getBoundingClientRect().width") >= 128  # shown enlarged...
    assert result.evaluate("img => getComputedStyle(img).imageRendering") == "pixelated"  # ...pixel for pixel
    assert "Seed: 7" in page.text_content("#result-info")
    assert page.get_attribute("#cancel", "disabled") is not None  # only while a request runs

    shot = ROOT / "docs/images/server-page.png" if os.environ.get("LDMKIT_SCREENSHOT") == "1" else tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0

    # the seed buttons: dice = -1, recycle = the seed just used
    page.click("#seed-random")
    assert page.input_value("#seed") == "-1"
    page.click("#seed-reuse")
    assert page.input_value("#seed") == "7"

    # the gallery shows the result; restore puts its settings back
    first = page.locator("#gallery figure").first
    first.wait_for()
    shown = [f.get_attribute("data-id") for f in page.locator("#gallery figure").all()[:4]]
    assert shown == answer["ids"][::-1]  # newest first (the server may hold other tests' results after them)
    page.fill("#prompt", "something else")
    page.fill("#steps", "9")
    first.locator("button.restore").click()
    assert (page.input_value("#prompt"), page.input_value("#steps")) == (PROMPT, "4")

    # PNG info of the generated file
    png = tmp_path / "generated.png"
    png.write_bytes(base64.b64decode(answer["images"][0]))
    page.fill("#prompt", "")
    page.click("[data-tab=pnginfo]")
    page.set_input_files("#png-file", str(png))
    page.wait_for_function("document.querySelector('#png-info-text').textContent.includes('Steps:')")
    info = page.text_content("#png-info-text")
    assert PROMPT in info and "Seed: 7" in info
    page.click("#send-to-txt2img")
    assert page.get_attribute("[data-tab=txt2img]", "aria-selected") == "true"
    assert (page.input_value("#prompt"), page.input_value("#steps"), page.input_value("#seed")) == (PROMPT, "4", "7")


def test_inpaint_sends_the_mask_drawn_on_the_canvas(page, tmp_path):
    image = Image.new("L", (32, 32), 0)
    image.paste(200, (8, 8, 24, 24))
    path = tmp_path / "input.png"
    image.save(path)

    page.click("[data-tab=inpaint]")
    page.fill("#prompt", PROMPT)
    page.fill("#steps", "4")
    page.set_input_files("#init-image", str(path))
    canvas = page.locator("#mask-canvas")
    canvas.wait_for()
    page.wait_for_function("document.querySelector('#mask-canvas').width === 32")
    box = canvas.bounding_box()
    assert box["width"] >= 128  # the 32 px image is shown enlarged to paint on
    y = box["y"] + box["height"] * 0.5  # a stroke across the middle, from 1/4 to 3/4 of the width
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.25 + 0.05 * k), y)
    page.mouse.up()

    sent, answer = generate(page, "/sdapi/v1/img2img")
    assert sent["prompt"] == PROMPT and sent["denoising_strength"] == 1
    mask = Image.open(io.BytesIO(base64.b64decode(sent["mask"]))).convert("L")
    assert mask.size == (32, 32)
    assert mask.getpixel((16, 16)) == 255 and mask.getpixel((16, 2)) == 0  # white on the stroke, black off it
    assert mask.getpixel((4, 16)) == 0 and mask.getpixel((28, 16)) == 0
    page.locator("#results img").first.wait_for()
    assert page.locator("#results img").count() == len(answer["images"]) == 1


def test_image_metadata_is_shown_as_text_never_as_html(page, tmp_path):
    """Stored XSS through metadata: a PNG whose settings hold markup shows the markup as text."""
    from PIL import PngImagePlugin

    attack = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{attack}\nSteps: 4, Sampler: Euler, CFG scale: 3, Seed: 1, Size: 32x32")
    path = tmp_path / "attack.png"
    Image.new("L", (32, 32)).save(path, pnginfo=info)
    page.click("[data-tab=pnginfo]")
    page.set_input_files("#png-file", str(path))
    page.wait_for_function("document.querySelector('#png-info-text').textContent.includes('Steps:')")
    assert attack in page.text_content("#png-info-text")
    page.click("#send-to-txt2img")
    assert page.input_value("#prompt") == attack
    assert page.evaluate("window.pwned") is None
    assert page.locator("#png-info-text img, #png-info-text script").count() == 0
