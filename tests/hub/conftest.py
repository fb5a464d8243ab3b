"""Local stand-ins for the places releases come from: file:// URLs and an HTTP server on loopback.

`server` serves bytes from a dict with real Range support (206 / 416) and If-Range (a strong ETag of the content;
a stale one gets the whole file, 200), and can be told to cut the next transfer short (`cut_after`), to ignore
Range (`ranges = False`) or to send no ETag (`etags = False`), as an unreliable host would.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from ppflow.convert.formats import export_state
from ppflow.hub import Release
from ppflow.models import create_model
from tests.conftest import randomize


@dataclass
class ServerState:
    files: dict = field(default_factory=dict)  # path -> bytes
    ranges: bool = True  # honour Range requests
    etags: bool = True  # send a strong ETag (and honour If-Range)
    cut_after: int | None = None  # send only this many bytes of the next response, then hang up
    requests: list = field(default_factory=list)  # (path, Range header or None)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        st: ServerState = self.server.state
        path = self.path.split("?")[0]
        rng = self.headers.get("Range")
        st.requests.append((path, rng))
        data = st.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"' if st.etags else None
        m = re.match(r"bytes=(\d+)-$", rng or "")
        if_range = self.headers.get("If-Range")
        if m and st.ranges and (if_range is None or if_range == etag):
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if etag:
            self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if st.cut_after is not None:
            body, st.cut_after = body[:st.cut_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused: the host is unreachable)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A fresh PPFLOW_HOME (and downloads on) for every test."""
    monkeypatch.setenv("PPFLOW_HOME", str(tmp_path / "home"))
    for var in ("PPFLOW_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="session")
def sit_bytes() -> bytes:
    """A tiny SiT checkpoint in SiT's own layout, as a release file would hold it."""
    torch.manual_seed(0)
    model = randomize(create_model("SiT-tiny/2", input_size=8, num_classes=3))
    buf = io.BytesIO()
    torch.save(export_state(model, "sit"), buf)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release(url: str, sha256: str | None = None, name: str = "SiT-test", **kw) -> Release:
    return Release(name, url, "SiT-test.pt", "sit", sha256=sha256, **kw)


def add_to_hub_cache(cache, repo_id: str, folder, commit: str, refs: tuple[str, ...] = ("main",)):
    """Lay `folder` out in a huggingface_hub cache as a downloaded snapshot of `repo_id` at `commit`: files in
    blobs/<sha256>, relative symlinks in snapshots/<commit>/, each ref in refs/ holding the commit."""
    import os
    from pathlib import Path

    from huggingface_hub.file_download import repo_folder_name

    storage = Path(cache) / repo_folder_name(repo_id=repo_id, repo_type="model")
    snap = storage / "snapshots" / commit
    for f in sorted(Path(folder).rglob("*")):
        if f.is_dir():
            continue
        data = f.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snap
