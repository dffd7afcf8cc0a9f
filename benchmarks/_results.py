"""Shared helper for benchmarks: append a dated section to benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu}, torch {torch.__version__}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=False).stdout.strip() or "uncommitted"
    except OSError:
        return "unknown"


def append_section(title: str, command: str, body: str) -> None:
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section: the command that produced it, when, on what.\n",
                           encoding="utf-8")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"\n## {title}\n\n- command: `{command}`\n- date: {stamp}, commit {commit()}\n"
               f"- machine: {machine()}\n\n{body.strip()}\n")
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(section)


def run_timed(cmd: list[str]) -> float:
    """Run a command (a skulens step of a benchmark); its wall time in seconds, or exit naming the command."""
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, check=False).returncode
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {shlex.join(cmd)}")
    return time.perf_counter() - t0
