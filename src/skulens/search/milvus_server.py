"""A real Milvus standalone server on this machine, for tests and benchmarks (the ``[milvus-server]`` extra).

The PyPI package ``milvus`` (2.3.x) ships the Milvus standalone binary with embedded etcd and local
storage; this starts it on free localhost ports with its data under one folder, and stops it::

    with LocalMilvusServer(tmp_dir) as server:
        index = create_index("milvus", server.uri, 1280)    # http://127.0.0.1:<port>

It is one process of ~300 MB idle, not a cluster: production uses a Milvus deployment of its own
(``http://host:19530``), which the same ``MilvusIndex`` code talks to. What the package does not do
and this does: every port free (the package's embedded etcd always takes 2379/2380, so two servers
on one machine collide), the process watched while waiting (the package waits 3 minutes for a server
that already died), the 250 MB binary unpacked once per user instead of once per data folder, and
the server killed with its parent process (Linux), so a killed test run leaves no server behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LocalMilvusServer", "MilvusServerUnavailable"]


class MilvusServerUnavailable(RuntimeError):
    """The ``milvus`` package is missing, or its server did not start (the message says which)."""


def _milvus_package() -> Any:
    try:
        import milvus
    except ImportError:
        raise MilvusServerUnavailable("a local Milvus server needs the PyPI package 'milvus' (2.3.x): "
                                      "pip install 'skulens[milvus-server]'") from None
    return milvus


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binaries(milvus: Any) -> Path:
    """The unpacked server binary and its libraries, shared by every server of this user and version."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skulens" / f"milvus-{milvus.__version__}"
    root.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions starting at once unpack it once
        milvus._initialize_data_files(str(root))  # no-op when already unpacked (checked by md5)
    return root / "bin"


def _die_with_parent() -> Any:
    """A preexec_fn that has the server killed when this process dies (Linux), or None. The libc call is
    looked up here, before the fork: the child may only call it (no imports in a forked, threaded process)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class LocalMilvusServer:
    """One Milvus standalone process; ``settings`` are extra ``milvus.yaml`` values by dotted key
    (only keys the package's template has, e.g. ``{"proxy.timeTickInterval": 50}``)."""

    def __init__(self, data_dir: str | os.PathLike[str], settings: Mapping[str, Any] | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.settings = dict(settings or {})
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._logs: list[Any] = []

    @property
    def uri(self) -> str:
        if self._proc is None:
            raise MilvusServerUnavailable("the Milvus server is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 180.0) -> LocalMilvusServer:
        milvus = _milvus_package()
        if self._proc is not None:
            return self
        bin_dir = _binaries(milvus)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "configs").mkdir(exist_ok=True)
        if not (self.data_dir / "bin").exists():
            (self.data_dir / "bin").symlink_to(bin_dir, target_is_directory=True)
        # The embedded etcd reads its listen addresses from a file of its own; without one it takes 2379/2380.
        etcd_port, peer_port = _free_port(), _free_port()
        etcd_conf = self.data_dir / "configs" / "embed-etcd.yaml"
        etcd_conf.write_text(f"name: default\nlisten-client-urls: http://127.0.0.1:{etcd_port}\n"
                             f"advertise-client-urls: http://127.0.0.1:{etcd_port}\n"
                             f"listen-peer-urls: http://127.0.0.1:{peer_port}\n"
                             f"initial-advertise-peer-urls: http://127.0.0.1:{peer_port}\n"
                             f"initial-cluster: default=http://127.0.0.1:{peer_port}\n", encoding="utf-8")
        base = Path(milvus.__file__).parent / "data" / "config.yaml.template"
        text = base.read_text(encoding="utf-8")
        if "\netcd:\n" not in text:
            raise MilvusServerUnavailable(f"{base}: unexpected config template (milvus {milvus.__version__})")
        template = self.data_dir / "configs" / "milvus.yaml.template"
        template.write_text(text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_conf}\n", 1),
                            encoding="utf-8")
        config = milvus.MilvusServerConfig(template=str(template), data_dir=str(self.data_dir))
        config.glog_conf_file = str(base.with_name("glog.conf"))  # the package sets it only for its own template
        ports = {key: _free_port() for key in config.configurable_items if key.endswith("_port")}
        config.update(**{**ports, "etcd_port": etcd_port})
        for key, value in self.settings.items():
            config.set(key, value)
        config.resolve()  # writes configs/milvus.yaml
        self.port = int(config.get("proxy_port"))
        metrics_port = _free_port()
        env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(metrics_port),
               "MILVUS_RUN_DIR": str(self.data_dir / "run"),
               "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(bin_dir), os.environ.get("LD_LIBRARY_PATH")]))}
        logs = self.data_dir / "logs"
        self._logs = [open(logs / "milvus-stdout.log", "wb"), open(logs / "milvus-stderr.log", "wb")]  # noqa: SIM115
        self._proc = subprocess.Popen(
            [str(bin_dir / "milvus"), "run", "standalone"], cwd=self.data_dir, env=env,
            stdout=self._logs[0], stderr=self._logs[1], stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent())  # noqa: PLW1509
        try:
            self._wait_ready(metrics_port, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, metrics_port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        health = f"http://127.0.0.1:{metrics_port}/healthz"
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise MilvusServerUnavailable(f"the Milvus server exited ({self._proc.returncode}) while starting: "
                                              f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise MilvusServerUnavailable(f"the Milvus server was not ready after {timeout:.0f} s: "
                                              f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if b"OK" in resp.read():
                        break
            except OSError:
                pass
            time.sleep(0.2)
        from pymilvus import MilvusClient  # healthy is not yet serving: wait for a real call to answer

        while True:
            try:
                client = MilvusClient(uri=f"http://127.0.0.1:{self.port}", timeout=10)
                client.list_collections()
                client.close()
                return
            except Exception:  # not up yet, whatever pymilvus raises
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise
                time.sleep(0.2)

    def log_tail(self, lines: int = 5) -> str:
        path = self.data_dir / "logs" / "milvus-stderr.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        keep = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("\t", " "))]
        return " | ".join(keep[-lines:]) + f" (log: {path})"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s); the data folder stays."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for f in self._logs:
            with contextlib.suppress(OSError):
                f.close()
        self._logs = []

    def remove_data(self) -> None:
        """Stop, then delete the data folder."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalMilvusServer:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
