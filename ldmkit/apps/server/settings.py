"""What a server is started with: the model, where users' files live, and the limits every
request is held to (each broken limit is a 4xx that names it)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    max_side: int = 1024  # pixels, width and height
    max_steps: int = 150
    max_images: int = 16  # batch_size x n_iter of one request
    max_prompt_chars: int = 4000
    max_body_bytes: int = 32 * 2**20  # a request, base64 images included
    max_upload_pixels: int = 4096 * 4096  # an uploaded image, checked before it is decoded
    queue_size: int = 8  # jobs waiting; one more is answered 503
    gallery_size: int = 256  # results kept for the page's gallery, oldest dropped


@dataclass(frozen=True)
class ServerSettings:
    model: str = "fashion-mnist"
    models_dir: Path | None = None  # users' models, with Lora/, embeddings/, hypernetworks/ (A1111's layout)
    host: str = "127.0.0.1"
    port: int = 7860
    auth: dict[str, str] = field(default_factory=dict)  # user -> password; empty: no auth
    outputs: Path | None = None  # also write every result here as a PNG (off by default)
    device: str = "cpu"
    fast: bool | str = False  # Pipeline.from_pretrained's fast= for the diffusion models it loads
    limits: Limits = Limits()

    def __post_init__(self):
        if not is_loopback(self.host) and not self.auth:
            raise ValueError(f"--host {self.host} is reachable from other machines: give --api-auth USER:PASS "
                             "too (or bind 127.0.0.1)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None) -> dict[str, str]:
    """"user:pass[,user2:pass2]" -> {user: pass}."""
    users = {}
    for entry in filter(None, (text or "").split(",")):
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--api-auth takes USER:PASS[,USER2:PASS2], got {entry!r}")
        users[user] = password
    return users
