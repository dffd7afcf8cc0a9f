"""Helpers for the service tests: real image bytes, the bad-input set, a real uvicorn server in a thread."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from conftest import make_image

GPS_TAG = 0x8825  # EXIF GPSInfo IFD pointer


def photo_bytes(label: str | None, seed: int, *, gps: bool = False, fmt: str = "JPEG") -> bytes:
    """A real product photo of the tiny catalogue's kind (label None: a plain grey frame, which the model
    is unsure about); with `gps`, EXIF carrying a GPS position, as phone photos do."""
    img = make_image(label, np.random.default_rng(seed)) if label else Image.new("RGB", (72, 72), (128, 128, 128))
    buf = io.BytesIO()
    if gps:
        exif = Image.Exif()
        exif[0x010F] = "PhoneMaker"  # Make
        exif.get_ifd(GPS_TAG).update({1: "N", 2: (59.0, 20.0, 0.0), 3: "E", 4: (18.0, 4.0, 0.0)})
        img.save(buf, format=fmt, exif=exif.tobytes(), quality=90)
    else:
        img.save(buf, format=fmt, quality=90)
    return buf.getvalue()


def has_gps(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        exif = im.getexif()
        return bool(exif) and bool(exif.get_ifd(GPS_TAG))


def png_with_declared_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims width x height (CRC fixed up): what a bomb's header looks like."""
    buf = io.BytesIO()
    Image.new("1", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bad_uploads(good: bytes) -> dict[str, tuple[str, bytes, str]]:
    """name -> (file name, bytes, declared content type) of uploads that must be refused with a 4xx."""
    return {
        "corrupt": ("corrupt.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "image/jpeg"),
        "truncated": ("truncated.jpg", good[: len(good) // 2], "image/jpeg"),
        "empty": ("empty.jpg", b"", "image/jpeg"),
        "bomb": ("bomb.png", png_with_declared_size(60000, 60000), "image/png"),
        "20000x20000": ("huge.png", png_with_declared_size(20000, 20000), "image/png"),
        "text named .jpg": ("photo.jpg", b"this is not a photo, just text\n" * 20, "image/jpeg"),
        "html named .png": ("x.png", b"<html><script>alert(1)</script></html>", "image/png"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve `app` with a real uvicorn on a free localhost port, in a thread; yields the base URL."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.started:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during startup")
        time.sleep(0.1)
    else:
        raise TimeoutError("server did not become ready")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class SlowModel:
    """A real model whose predict takes `delay` seconds longer (to fill the queue on purpose)."""

    def __init__(self, model: Any, delay: float):
        self._model, self._delay = model, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._delay)
        return self._model.predict(*args, **kwargs)


@contextlib.contextmanager
def serve_process(args: list[str], log_path: Any, env: dict[str, str], cwd: Any = None,
                  timeout_s: float = 240) -> Iterator[str]:
    """A real `skulens serve ARGS` process on a free localhost port, its output in `log_path`; yields its URL once
    /readyz answers 200, and stops it with SIGINT (killed after 30 s) on the way out."""
    import signal
    import subprocess
    import sys

    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "skulens.cli", "serve", *args, "--port", str(port)],
                                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, f"skulens serve exited: {Path(log_path).read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"skulens serve not ready in {timeout_s:.0f} s"
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
