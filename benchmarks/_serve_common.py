"""Shared pieces of the service benchmarks: start `skulens serve` as a real subprocess, find photos, percentiles."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """`skulens serve` in a subprocess (exactly what a user runs)."""

    model: str
    args: list[str] = field(default_factory=list)
    log: Path | None = None
    port: int = field(default_factory=free_port)
    key: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "skulens.cli", "serve", "--model", self.model, "--port", str(self.port),
                *self.args]

    def start(self, timeout: float = 300) -> Server:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        env = {**os.environ, "SKULENS_API_KEYS": f"bench:{self.key}"}
        self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"skulens serve exited with {self.proc.returncode} (log: {self.log})")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"skulens serve not ready after {timeout} s")

    def peak_rss_mb(self) -> float:
        """The server process's peak resident memory so far (VmHWM)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def __enter__(self) -> Server:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def intake_uploads(folder: str | None, uploads: int, duplicates: float) -> tuple[int, list[tuple[int, bytes]]]:
    """For the intake benchmarks: `uploads` photo uploads of which a `duplicates` fraction repeat a photo
    already in the set, seeded and shuffled, each as (photo index, bytes); and the number of distinct
    photos. `folder` None: the grocery train split."""
    import random

    n_unique = round(uploads * (1 - duplicates))
    if folder is None:
        from skulens.data.locate import find_default_data

        root = find_default_data()
        folder = str(root / "train") if root else None
    photos = find_photos(folder, limit=None)
    if len(photos) < n_unique:
        raise SystemExit(f"need {n_unique} distinct photos, found {len(photos)} under {folder}")
    rng = random.Random(0)
    unique = [(i, p.read_bytes()) for i, p in enumerate(rng.sample(photos, n_unique))]
    out = unique + [rng.choice(unique) for _ in range(uploads - n_unique)]
    rng.shuffle(out)
    return n_unique, out


def find_photos(folder: str | None, limit: int | None = None) -> list[Path]:
    """Photos under `folder` (default: the grocery dataset's val split, else its train split)."""
    if folder is None:
        from skulens.data.locate import find_default_data

        root = find_default_data()
        if root is None:
            raise SystemExit("no --photos given and the grocery dataset was not found (see README)")
        folder = str(root / "val")
    photos = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not photos:
        raise SystemExit(f"no photos under {folder}")
    return photos[:limit] if limit else photos


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]
