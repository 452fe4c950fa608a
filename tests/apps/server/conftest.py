"""A server over the shipped fashion-mnist-f4 model (8 x 8 latents: fast, and the LCM-LoRA,
classifier and ControlNet fixtures are built on it) and a models folder in A1111's layout (a LoRA,
an embedding, a hypernetwork), for the API, client and security tests."""

import socket
import threading
import time

import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from ldmkit import Pipeline
from ldmkit.apps.server import Limits, ServerSettings, create_app
from ldmkit.finetune.hypernetwork import Hypernetwork, save_hypernetwork
from ldmkit.finetune.lora import LoRANetwork
from ldmkit.finetune.lora_formats import save_lora

SERVED = "fashion-mnist-f4"


@pytest.fixture(scope="package")
def pipe():
    return Pipeline.from_pretrained("fashion-mnist-f4")


@pytest.fixture(scope="package")
def models_dir(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    g = torch.Generator().manual_seed(0)
    network = LoRANetwork.create({"unet": pipe.net}, rank=4)
    with torch.no_grad():
        for _, adapter in network.items():  # trained-looking: B != 0
            adapter.up.weight.copy_(0.2 * torch.randn(adapter.up.weight.shape, generator=g))
    save_lora(network, folder / "Lora" / "stripes.safetensors")
    (folder / "embeddings").mkdir()
    save_file({"thing": torch.randn(1, 384, generator=g)}, str(folder / "embeddings" / "thing.safetensors"))
    hypernetwork = Hypernetwork.create([384], layer_structure=(1, 2, 1))
    save_hypernetwork(hypernetwork, folder / "hypernetworks" / "soft.safetensors")
    return folder


@pytest.fixture(scope="package")
def app(models_dir):
    torch.set_num_threads(1)
    return create_app(ServerSettings(model=SERVED, models_dir=models_dir, limits=Limits(queue_size=4)))


@pytest.fixture(scope="package")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="package")
def live_server(models_dir):
    """The server on a free loopback port in a thread: (base url, the app)."""
    app = create_app(ServerSettings(model=SERVED, models_dir=models_dir, limits=Limits(queue_size=3)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    """One Chromium for a test module (one that called browser.require_browser)."""
    from browser import CHROMIUM
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()
