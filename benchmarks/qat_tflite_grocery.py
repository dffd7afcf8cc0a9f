"""Quantization-aware fine-tuning before LiteRT int8 (`skulens export --format tflite --int8 --qat`) on grocery.

    python benchmarks/qat_tflite_grocery.py [--bundle runs/fast] [--out runs/bench-qat]

Needs the converter (pip install -e '.[tflite-export]'). Side by side, against the bundle in PyTorch fp32:

1. plain int8: `skulens export --format tflite --int8` (the static recipe calibrated on 256 train photos);
2. `--qat`: the same command with the weights fine-tuned through int8 rounding first (on all train photos);
3. a check on photos the fine-tune never saw: the fine-tune on train less a seeded, stratified 15 % hold-out
   (the hold-out of `--select-on holdout`), then the same export; scored on that hold-out and on val.

For each file: top-1 on val (and the hold-out), the top-1s that differ from PyTorch fp32, the mean and max
|p diff| of the fine probabilities, and the file size. Appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/fast")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/grocery-store"))
    ap.add_argument("--out", default="runs/bench-qat")
    ns = ap.parse_args()
    import numpy as np

    import skulens
    from skulens.data.catalogue import load_catalogue, selection_split
    from skulens.deploy.quantize import calibration_sample
    from skulens.deploy.tflite import export_tflite_checked
    from skulens.models.predictor import load_tflite

    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for name, extra in (("plain", []), ("qat", ["--qat"])):
        cmd = [sys.executable, "-m", "skulens.cli", "export", "-m", ns.bundle, "--format", "tflite", "--int8",
               *extra, "--data", ns.data, "-o", str(out / f"{name}.tflite"), "-q"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds[name] = time.perf_counter() - t

    cat = load_catalogue(ns.data)
    kept, held, val = selection_split(cat, "holdout", 0.15, 0)
    t = time.perf_counter()
    res = export_tflite_checked(ns.bundle, out / "qat-holdout.tflite", qat_samples=kept, progress=True,
                                parity_photos=calibration_sample(ns.data, split="val", images=64),
                                calibration_photos=calibration_sample(ns.data, split="train", images=256))
    tuned = res.qat
    seconds["qat-holdout"] = time.perf_counter() - t

    ref = skulens.load(ns.bundle, device="cpu", precision="off")
    classes = np.array(ref.card.classes)
    files = {"plain int8": out / "plain.int8.tflite", "--qat int8 (fine-tuned on all train)": out / "qat.int8.tflite",
             "--qat int8 (fine-tuned on train less the hold-out)": out / "qat-holdout.int8.tflite"}
    rows = []
    for split_name, samples in (("val", list(val or [])), ("train hold-out (15 %)", held)):
        labels = np.array([s.label for s in samples])
        tensors, _, failed = ref._decode([str(s.path) for s in samples])
        assert not failed, failed
        a = ref.run(tensors).fine
        rows.append(f"| {split_name} | PyTorch fp32 | {100 * np.mean(classes[a.argmax(1)] == labels):.2f} | | | | "
                    f"{Path(ns.bundle, 'model.safetensors').stat().st_size / 1e6:.1f} |")
        for label, path in files.items():
            if split_name != "val" and "all train" in label:
                continue  # it was fine-tuned on these photos
            b = load_tflite(path).run(tensors).fine
            d = np.abs(a - b)
            rows.append(f"| {split_name} | {label} | {100 * np.mean(classes[b.argmax(1)] == labels):.2f} | "
                        f"{int(np.sum(a.argmax(1) != b.argmax(1)))} of {len(labels)} | {d.sum(1).mean():.4f} | "
                        f"{d.max():.2f} | {path.stat().st_size / 1e6:.1f} |")
    body = (f"Bundle `{ns.bundle}` ({ref.card.backbone}); export wall time: plain {seconds['plain']:.0f} s, --qat "
            f"{seconds['qat']:.0f} s, hold-out variant {seconds['qat-holdout']:.0f} s (the fine-tune: "
            f"{tuned.steps} steps, {tuned.seconds:.0f} s).\n\n"
            "| photos | file | top-1 | top-1s not PyTorch's | mean sum abs p diff | max abs p diff | MB |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(body)
    append_section("Quantization-aware fine-tuning before LiteRT int8 (grocery)",
                   " ".join(shlex.quote(a) for a in ["python", *sys.argv]), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
