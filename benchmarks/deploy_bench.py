"""Deployment benchmark on Grocery Store val: every inference variant of a bundle, measured in one run.

    python benchmarks/deploy_bench.py [--bundle runs/bench5/bundle] [--distilled B] [--pruned B]
                                      [more `skulens bench` flags]

Runs `skulens bench` (one fresh process per variant) and appends its table to benchmarks/RESULTS.md:
the baseline (naive PIL preprocessing + PyTorch eager fp32, batch 64), PyTorch fp32 and bf16 channels-last,
PyTorch with dynamic int8 Linear heads, ONNX Runtime fp32 and int8, and the distilled / pruned bundles
when given (each with PyTorch bf16 and ONNX Runtime fp32; `--extra-runtimes` to change).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/bench5/bundle")
    ap.add_argument("--out", default=f"runs/bench-deploy-{time.strftime('%Y%m%d-%H%M%S')}")
    ns, extra = ap.parse_known_args()
    cmd = [sys.executable, "-m", "skulens.cli", "bench", "--model", ns.bundle, "--out", ns.out, *extra]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, check=False).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"skulens bench failed with exit code {rc}", file=sys.stderr)
        return rc
    res = json.loads(Path(ns.out, "bench.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    notes = []
    fp32, dyn = rows.get("default (torch-fp32)"), rows.get("default (torch-dynamic-int8)")
    if fp32 and dyn:
        notes.append(f"PyTorch dynamic int8 quantization only reaches the Linear heads (no conv kernels): "
                     f"{dyn['throughput_ips'] / fp32['throughput_ips']:.2f}x the fp32 throughput, "
                     f"{fp32['size_mb'] - dyn['size_mb']:.1f} MB smaller.")
    body = "\n".join([
        (f"Bundle `{ns.bundle}`, Grocery Store {res['split']} split. Top-1 is computed on the timed pass "
         "itself; latency is one image from file to prediction (batch 1); throughput includes JPEG "
         f"decoding and preprocessing (median of {res['settings'].get('repeats', 1)} passes). The baseline "
         "preprocesses like a naive seed script (PIL bilinear resize), the other variants like skulens "
         "(Lanczos shrink, antialiased resize), so their top-1 can differ from the baseline's by a photo "
         "or two."),
        "",
        Path(ns.out, "bench.md").read_text(encoding="utf-8").strip(),
        "",
        *notes,
        f"Wall time of the benchmark (exports, int8 calibration, all variants): {wall / 60:.1f} min.",
    ])
    command = ("python benchmarks/deploy_bench.py " + shlex.join(sys.argv[1:])).strip()
    append_section("Deployment benchmark (grocery val)", command, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
