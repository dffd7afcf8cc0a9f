"""Pruning on Grocery Store: sparsity vs accuracy vs measured speed, after a short recovery fine-tune.

    python benchmarks/prune_grocery.py [--bundle runs/bench5/bundle] [--structured 0.2,0.3]
                                       [--unstructured 0.5] [--round-to 8] [extra `skulens prune` flags]

For each setting: `skulens prune` (the pruned bundle, then the recovery fine-tune through the engine),
`skulens evaluate` of the pruned bundle before recovery, then one `skulens bench` run measuring the
original and every recovered bundle with PyTorch fp32 / bf16 and ONNX Runtime fp32. Appends to RESULTS.md.
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

RUNTIMES = "torch-fp32,torch-bf16,onnx-fp32"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/bench5/bundle")
    ap.add_argument("--structured", default="0.2,0.3", help="amounts of structured (channel) pruning")
    ap.add_argument("--unstructured", default="0.5", help="amounts of unstructured L1 pruning")
    ap.add_argument("--round-to", default="8", help="structured: channel counts multiples of N ('' for none)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=f"runs/bench-prune-{time.strftime('%Y%m%d-%H%M%S')}")
    ns, extra = ap.parse_known_args()
    cli = [sys.executable, "-m", "skulens.cli"]
    data = ["--data", ns.data] if ns.data else []
    out = Path(ns.out)
    settings = [("structured", float(a)) for a in ns.structured.split(",") if a.strip()]
    settings += [("unstructured", float(a)) for a in ns.unstructured.split(",") if a.strip()]
    runs = {}
    for kind, amount in settings:
        name = f"{kind}-{amount:g}"
        rt = ["--round-to", ns.round_to] if kind == "structured" and ns.round_to else []
        wall = run_timed([*cli, "prune", "--model", ns.bundle, "--out", str(out / name), "--kind", kind,
                     "--amount", str(amount), *rt, *data, "-q", *extra])
        run_timed([*cli, "evaluate", "--model", str(out / name / "pruned"), *data, "--out", str(out / name / "eval-pruned"),
              "-q"])
        runs[name] = wall
    bench = out / "bench"
    run_timed([*cli, "bench", "--model", ns.bundle, *data, "--out", str(bench), "--variants", f"baseline,{RUNTIMES}",
          "--extra-runtimes", RUNTIMES, *[a for n in runs for a in ("--extra", f"{n}={out / n / 'bundle'}")]])
    res = {r["name"]: r for r in json.loads((bench / "bench.json").read_text())["rows"]}
    orig = json.loads(Path(ns.bundle, "card.json").read_text())

    def speed(prefix: str) -> str:
        return " | ".join(f"{res[f'{prefix} ({r})']['throughput_ips']:.1f}" for r in RUNTIMES.split(","))

    cards = {name: json.loads((out / name / "bundle" / "card.json").read_text()) for name in runs}
    n_orig = next(iter(cards.values()))["pruning"]["params_before"]
    rows = [
        "| model | params | sparsity | val top-1 after pruning | after recovery | recovery min | "
        + " | ".join(f"{r} img/s" for r in RUNTIMES.split(",")) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(RUNTIMES.split(",")),
        f"| original | {n_orig:,} | 0% | - | {100 * orig['metrics']['top1']:.1f} | - | {speed('default')} |",
    ]
    for name, wall in runs.items():
        card = cards[name]
        p = card["pruning"]
        before = json.loads((out / name / "eval-pruned" / "report.json").read_text())["summary"]["top1"]
        rows.append(f"| {name} | {p['params_after']:,} | {100 * p['sparsity']:.1f}% | {100 * before:.1f} | "
                    f"{100 * card['metrics']['top1']:.1f} | {wall / 60:.1f} | {speed(name)} |")
    cfg = card["train_config"]
    verdicts = _verdicts(res, cards, orig["metrics"]["top1"])
    body = "\n".join([
        (f"Grocery Store val ({card['dataset']['sizes'].get('val')} photos). Structured: torch-pruning, L1 channel magnitude per dependency "
         "group (expanded channels, residual streams, stem), heads and final 1x1 conv kept; the card lists "
         "the new widths. Unstructured: per-layer L1 on every backbone conv, zeros held during recovery. "
         f"Recovery (`skulens prune` defaults + extra flags): {cfg['epochs']} epochs, "
         f"freeze={cfg['freeze']}, lr {cfg['lr']}"
         + (f", distilled from `{cfg['teacher']}` (T={cfg['distill_temperature']:g}, alpha={cfg['distill_alpha']:g})"
            if cfg.get("teacher") else "") + ". Speed: end-to-end images/s from one `skulens bench` run "
         "(decode + preprocessing + inference)."),
        "",
        *rows,
        "",
        *verdicts,
        f"Bench table: {bench / 'bench.md'}.",
    ])
    command = ("python benchmarks/prune_grocery.py " + shlex.join(sys.argv[1:])).strip()
    append_section("Pruning: sparsity vs accuracy vs speed (grocery val)", command, body)
    print(body)
    return 0


def _verdicts(res: dict, cards: dict, top1: float) -> list[str]:
    """Plain sentences from the measured numbers: the speed each kind buys and the accuracy it costs."""
    out = []
    for name, card in cards.items():
        ratios = [res[f"{name} ({r})"]["throughput_ips"] / res[f"default ({r})"]["throughput_ips"]
                  for r in RUNTIMES.split(",")]
        lost = 100 * (top1 - card["metrics"]["top1"])
        span = f"{min(ratios):.2f}x-{max(ratios):.2f}x the original's images/s"
        if card["pruning"]["kind"] == "unstructured":
            verdict = ("buys no CPU speed: dense kernels multiply the zeros all the same" if max(ratios) < 1.1
                       else "is faster here")
            out.append(f"- {name}: {span} ({', '.join(RUNTIMES.split(','))}), so unstructured sparsity "
                       f"{verdict}; it only shrinks a compressed download. Top-1 cost: {lost:.1f} points.")
        else:
            out.append(f"- {name}: {span} ({', '.join(RUNTIMES.split(','))}) for {lost:.1f} points of top-1 "
                       "after the recovery fine-tune.")
    return [*out, ""]


if __name__ == "__main__":
    raise SystemExit(main())
