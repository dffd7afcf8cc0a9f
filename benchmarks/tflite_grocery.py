"""TFLite / LiteRT on Grocery Store val: parity with PyTorch, top-1, size and speed, fp32 and int8.

    python benchmarks/tflite_grocery.py [--bundle runs/bench9/bundle] [--extra lite0=RUN/bundle]
                                        [more `skulens bench` flags]

Needs the converter (pip install -e '.[tflite-export]'). Two parts, appended to benchmarks/RESULTS.md:

1. `skulens bench` with the LiteRT rows beside PyTorch and ONNX Runtime (one fresh process per variant): top-1,
   file size, latency, end-to-end images/s. The bench exports model.tflite / model.int8.tflite (int8 calibrated
   on 256 train photos, the rule `skulens export --int8` uses) into OUT/models/NAME/.
2. Parity of those very files on every val photo: top-1 of PyTorch fp32, LiteRT fp32 and int8, the top-1
   agreement with PyTorch and the largest |p diff| of the fine probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section

TORCH_RUNTIMES = "baseline,torch-fp32,torch-bf16,onnx-fp32,onnx-int8"
LITE_RUNTIMES = "tflite-fp32,tflite-int8"


def parity_rows(bundle: str, models: Path, data: str) -> list[str]:
    import numpy as np

    import skulens
    from skulens.data.catalogue import load_catalogue
    from skulens.models.predictor import load_tflite

    samples = list(load_catalogue(data).split("val"))
    labels = np.array([s.label for s in samples])
    ref = skulens.load(bundle, device="cpu", precision="off")
    tensors, _, failed = ref._decode([str(s.path) for s in samples])
    assert not failed, failed
    classes = np.array(ref.card.classes)
    a = ref.run(tensors).fine
    rows = [(f"| {ref.card.backbone} | PyTorch fp32 | {100 * np.mean(classes[a.argmax(1)] == labels):.1f} | "
            f"| | {Path(bundle, 'model.safetensors').stat().st_size / 1e6:.1f} |")]
    for name in ("model.tflite", "model.int8.tflite"):
        b = load_tflite(models / name).run(tensors).fine
        rows.append(f"| {ref.card.backbone} | LiteRT {'int8' if 'int8' in name else 'fp32'} | "
                    f"{100 * np.mean(classes[b.argmax(1)] == labels):.1f} | "
                    f"{100 * np.mean(a.argmax(1) == b.argmax(1)):.1f} | {np.abs(a - b).max():.2g} | "
                    f"{(models / name).stat().st_size / 1e6:.1f} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/bench9/bundle")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=BUNDLE", help="more bundles")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/grocery-store"))
    ap.add_argument("--out", default=f"runs/bench-tflite-{time.strftime('%Y%m%d-%H%M%S')}")
    ns, rest = ap.parse_known_args()
    cmd = [sys.executable, "-m", "skulens.cli", "bench", "--model", ns.bundle, "--data", ns.data, "--out", ns.out,
           "--variants", f"{TORCH_RUNTIMES},{LITE_RUNTIMES}", "--extra-runtimes", f"torch-fp32,{LITE_RUNTIMES}",
           *[x for e in ns.extra for x in ("--extra", e)], *rest]
    load_before = os.getloadavg()[0]  # a shared machine: other people's load slows every row alike, or not
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, check=False).returncode
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    if rc != 0:
        print(f"skulens bench failed with exit code {rc}", file=sys.stderr)
        return rc
    res = json.loads(Path(ns.out, "bench.json").read_text())
    table = ["| backbone | runtime | top-1 | top-1 agreement with PyTorch % | max abs p diff | file MB |",
             "|---|---|---|---|---|---|"]
    bundles = {"default": ns.bundle, **dict(e.split("=", 1) for e in ns.extra)}
    for name, bundle in bundles.items():
        table += parity_rows(bundle, Path(ns.out, "models", name), ns.data)
    body = "\n".join([
        (f"Bundles: {', '.join(f'{k} `{v}`' for k, v in bundles.items())}; Grocery Store {res['split']} split "
        f"({res['n_images']} photos). LiteRT files from `litert-torch` (PyTorch -> .tflite directly, batch 1, "
        "the runner resizes the input for batches), int8 by ai-edge-quantizer (static, int8 weights per channel "
        "and int8 activations, min/max on 256 train photos; heads, softmax and the embedding's normalisation "
        "stay float), run by ai-edge-litert's interpreter (XNNPACK)."),
        "",
        "Parity, every val photo, fine probabilities against PyTorch fp32:",
        "",
        *table,
        "",
        "Side by side in one `skulens bench` run:",
        "",
        Path(ns.out, "bench.md").read_text(encoding="utf-8").strip(),
        "",
        (f"Wall time (exports, int8 calibration, all variants): {wall / 60:.1f} min; load average (1 min) "
         f"{load_before:.1f} at the start, {load_after:.1f} at the end of the bench."),
    ])
    command = ("python benchmarks/tflite_grocery.py " + shlex.join(sys.argv[1:])).strip()
    append_section("TFLite / LiteRT export (grocery val)", command, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
