"""What the record of these servers says to test: path traversal in file serving, CSRF against
a server on localhost, oversized requests, a server open to the network without a password,
and a wrong password."""

import base64
import socket

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from wire import b64_png

from ldmkit.apps.cli import main
from ldmkit.apps.server import Limits, ServerSettings, create_app

pytestmark = pytest.mark.usefixtures("one_thread")
TRAVERSALS = ["../app.py", "..%2fapp.py", "%2e%2e%2fapp.py", "%2e%2e/%2e%2e/settings.py", "....//app.py",
              "/etc/passwd", "%2fetc%2fpasswd", "..%5c..%5capp.py", "app.js/../../app.py", "%00app.js"]


def raw_get(base: str, path: str, headers: str = "") -> tuple[int, bytes]:
    """GET `path` byte for byte (no client normalises it): the status and the body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n{headers}\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("route", ["/static/", "/ldmkit/v1/outputs/", "/"])
@pytest.mark.parametrize("attempt", TRAVERSALS)
def test_no_route_serves_a_file_named_by_path(live_server, route, attempt):
    status, body = raw_get(live_server[0], route + attempt)
    assert status in (400, 404), (route + attempt, status)
    assert b"import" not in body and b"root:" not in body


def test_cross_site_posts_are_refused(client):
    body = {"prompt": "x", "steps": 1}
    r = client.post("/sdapi/v1/txt2img", json=body, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["detail"]
    r = client.post("/sdapi/v1/interrupt", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = client.post("/sdapi/v1/txt2img", content=b'{"prompt": "x"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415  # an HTML form's body, which needs no CORS preflight
    r = client.post("/sdapi/v1/txt2img", json=body, headers={"Origin": "http://testserver",
                                                             "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200  # the page itself


def test_oversized_requests_and_uploads_are_refused():
    app = create_app(ServerSettings(limits=Limits(max_body_bytes=2000, max_upload_pixels=100)))
    with TestClient(app) as client:
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x" * 3000})
        assert r.status_code == 413 and "the limit is 2000" in r.json()["detail"]
        chunked = client.post("/sdapi/v1/txt2img", content=(b"x" * 500 for _ in range(10)),
                              headers={"Content-Type": "application/json"})  # no Content-Length
        assert chunked.status_code == 413
        r = client.post("/sdapi/v1/img2img", json={"init_images": [b64_png(Image.new("L", (32, 32)))]})
        assert r.status_code == 422 and "over the limit of 100 pixels" in r.json()["detail"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5"])
def test_a_network_bind_needs_a_password(host, capsys):
    with pytest.raises(ValueError, match="--api-auth"):
        ServerSettings(host=host)
    assert main(["serve", "--host", host]) == 2 and "--api-auth" in capsys.readouterr().err
    ServerSettings(host=host, auth={"alice": "s3cret"})
    for loopback in ("127.0.0.1", "::1", "localhost"):
        ServerSettings(host=loopback)


def test_every_route_needs_the_password_when_one_is_set():
    app = create_app(ServerSettings(auth={"alice": "s3cret", "bob": "hunter2"}))
    good = "Basic " + base64.b64encode(b"bob:hunter2").decode()
    with TestClient(app) as client:
        routes = ["/", "/static/app.js", "/openapi.json", "/sdapi/v1/options", "/sdapi/v1/progress",
                  "/ldmkit/v1/gallery", "/ldmkit/v1/outputs/0123456789abcdef"]
        for route in routes:
            r = client.get(route)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic"), route
            for wrong in ("alice:hunter2", "bob:hunter", "mallory:s3cret", "bob", ""):
                header = "Basic " + base64.b64encode(wrong.encode()).decode()
                assert client.get(route, headers={"Authorization": header}).status_code == 401
            assert client.get(route, headers={"Authorization": good}).status_code in (200, 404)
        assert client.post("/sdapi/v1/interrupt", json={}).status_code == 401
        assert client.get("/sdapi/v1/options", auth=("alice", "s3cret")).status_code == 200
