"""The page's ControlNet and guidance controls in a real browser (Debian's chromium through
Playwright): a ControlNet picked by name with an uploaded hint goes out with txt2img, its
settings come back through the gallery's restore, and a ControlNet without a hint is refused
before anything is sent."""

import json

import pytest
import torch
from browser import require_browser

from ldmkit.data.fill_shapes import fill_shape
from ldmkit.utils.images import to_pil

require_browser()  # the page's tests skip, saying what to install, where Chromium or Playwright is missing

TIMEOUT_MS = 120_000


@pytest.fixture
def page(browser, live_server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(live_server[0] + "/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    page.close()
    assert not errors, f"the page's script failed: {errors}"


def test_a_controlnet_with_its_hint_goes_out_and_is_restored(page, tmp_path):
    hint, _, _ = fill_shape("blue", "circle", "top right", gen=torch.Generator().manual_seed(0))
    path = tmp_path / "outline.png"
    to_pil(hint * 2 - 1).save(path)
    page.fill("#prompt", "a photo of a bag")
    page.fill("#steps", "2")
    page.click(".steering summary")
    assert "shapes-control" in page.locator("#controlnet option").all_text_contents()
    page.select_option("#controlnet", "shapes-control")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert "pick a control image" in page.text_content("#error")

    page.set_input_files("#control-image", str(path))
    page.wait_for_selector("#control-preview:not([hidden])")
    page.fill("#control-scale", "0.7")
    with page.expect_response(lambda r: r.url.endswith("/sdapi/v1/txt2img"), timeout=TIMEOUT_MS) as answer:
        page.click("#generate")
    assert answer.value.ok, answer.value.text()
    sent = json.loads(answer.value.request.post_data)
    assert (sent["controlnet"], sent["control_scale"]) == ("shapes-control", 0.7) and sent["control_image"]
    assert "classifier" not in sent and "clip" not in sent and "rerank" not in sent  # only what is in use
    page.wait_for_selector("#generate:enabled", timeout=TIMEOUT_MS)

    page.select_option("#controlnet", "")
    page.fill("#control-scale", "1")
    newest = page.locator(f"#gallery figure[data-id='{answer.value.json()['ids'][0]}']")
    newest.wait_for()
    newest.locator("button.restore").click()
    assert (page.input_value("#controlnet"), page.input_value("#control-scale")) == ("shapes-control", "0.7")
