"""Distillation on Grocery Store: the student with and without the teacher's soft targets, beside the teacher.

    python benchmarks/distill_grocery.py [--teacher runs/bench5/bundle] [--student efficientnet_lite0]
                                         [--data PATH] [extra `skulens train` flags for both students]

Trains the student twice with the same recipe and seed (`skulens train` and `skulens distill`), both
selected on val, and appends teacher / student / distilled student to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section, run_timed


def _row(name: str, bundle: Path, wall: float | None) -> str:
    card = json.loads((bundle / "card.json").read_text())
    m = card["metrics"]
    mb = (bundle / "model.safetensors").stat().st_size / 1e6

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"

    return (f"| {name} | {card['backbone']} | {mb:.1f} | {pct(m.get('top1'))} | {pct(m.get('top5'))} | "
            f"{pct(m.get('coarse_top1'))} | {pct(m.get('macro_f1'))} | {m.get('ece', float('nan')):.3f} | "
            f"{'n/a' if wall is None else f'{wall / 60:.1f}'} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="runs/bench5/bundle")
    ap.add_argument("--student", default="efficientnet_lite0")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=f"runs/bench-distill-{time.strftime('%Y%m%d-%H%M%S')}")
    ns, extra = ap.parse_known_args()
    data = ["--data", ns.data] if ns.data else []
    cli = [sys.executable, "-m", "skulens.cli"]
    out = Path(ns.out)
    plain = run_timed([*cli, "train", "--backbone", ns.student, "--no-baseline", "--out", str(out / "plain"),
                  *data, *extra])
    distilled = run_timed([*cli, "distill", "--teacher", ns.teacher, "--student", ns.student, "--no-baseline",
                      "--out", str(out / "distilled"), *data, *extra])
    card = json.loads((out / "distilled" / "bundle" / "card.json").read_text())
    t = card["lineage"]["teacher"]
    rows = [
        "| model | backbone | weights MB | fine top-1 | top-5 | coarse top-1 | macro-F1 | ECE | train min |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("teacher", Path(ns.teacher), None),
        _row(f"student, labels only (`skulens train --backbone {ns.student}`)", out / "plain" / "bundle",
             plain),
        _row(f"student, distilled (T={t['temperature']:g}, alpha={t['alpha']:g})",
             out / "distilled" / "bundle", distilled),
    ]
    cfg = card["train_config"]
    body = "\n".join([
        (f"Grocery Store val ({card['dataset']['sizes'].get('val')} photos); both students use the same recipe, seed and selection on val: "
        f"{cfg['epochs']} epochs at {card['input_size']} px, freeze={cfg['freeze']}, lr {cfg['lr']}, "
        f"EMA {cfg['ema']}. Distillation: fine-head loss = alpha * KL(teacher/T || student/T) * T^2 + "
        "(1 - alpha) * CE on the same augmented batch, the teacher frozen in eval mode (bf16 autocast where "
        "the CPU has it); coarse and attribute heads keep their label losses."),
        "",
        *rows,
        "",
        ("Speed of the student: `python benchmarks/deploy_bench.py --distilled "
        f"{out / 'distilled' / 'bundle'}`."),
    ])
    command = "python benchmarks/distill_grocery.py " + shlex.join(sys.argv[1:])
    append_section(f"Distillation: {t['backbone']} teacher -> {ns.student} student (grocery val)",
                   command.strip(), body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
