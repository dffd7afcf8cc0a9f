"""Robustness on Grocery Store: the default model vs robustness fine-tunes (and a clean control).

    python benchmarks/robustness_grocery.py [--bundle runs/bench5/bundle] [--arms control,adversarial,robust]
                                            [--epochs 3] [--adversarial pgd] [--adv-eps 2] [--adv-steps 2]
                                            [--eps 0.5,1,2,4] [--pgd-steps 5] [--severities 1,2,3,4,5] [--limit N]
                                            [extra `skulens train` flags for every fine-tune]

Every fine-tune starts from BUNDLE with the same recipe (`--init-from`, a lower LR); `adversarial` adds
`--adversarial`, `robust` adds `--augment robust` (JPEG, blur, noise and lighting on a share of the photos),
`robust+adversarial` both, `robust-distill` degrades --corrupt-fraction of each batch in the training step
while BUNDLE, as a teacher, gives its soft targets on the clean photos; the control adds nothing, so each difference is what the arm adds and not the
extra epochs. Then `skulens robustness` (FGSM/PGD at --eps, six corruptions at --severities) on every model,
and a table of clean vs robust accuracy appended to benchmarks/RESULTS.md.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/bench5/bundle")
    ap.add_argument("--arms", default="control,adversarial",
                    help="fine-tunes beside the default model: control, adversarial, robust, robust+adversarial, "
                         "robust-distill")
    ap.add_argument("--epochs", default="3")
    ap.add_argument("--lr", default="3e-4", help="fine-tune LR (the bundle is already trained)")
    ap.add_argument("--adversarial", default="pgd", choices=("pgd", "fgsm"))
    ap.add_argument("--corrupt-fraction", default="0.5", help="robust-distill: share of each batch degraded")
    ap.add_argument("--adv-eps", default="2", help="training budget in pixel levels (x/255)")
    ap.add_argument("--adv-steps", default="2")
    ap.add_argument("--eps", default="0.5,1,2,4", help="evaluation budgets in pixel levels")
    ap.add_argument("--pgd-steps", default="5")
    ap.add_argument("--severities", default="1,2,3,4,5", help="corruption severities to run")
    ap.add_argument("--limit", default=None, help="evaluate on N val photos (seeded sample) instead of all")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=f"runs/bench-robust-{time.strftime('%Y%m%d-%H%M%S')}")
    ns, extra = ap.parse_known_args()
    cli = [sys.executable, "-m", "skulens.cli"]
    data = ["--data", ns.data] if ns.data else []
    out = Path(ns.out)
    backbone = json.loads(Path(ns.bundle, "card.json").read_text())["backbone"]
    tune = ["--init-from", ns.bundle, "--backbone", backbone, "--epochs", ns.epochs, "--lr", ns.lr,
            "--warmup-epochs", "0.5", "--no-baseline", *data, "-q", *extra]
    adversarial = ["--adversarial", ns.adversarial, "--adversarial-eps", ns.adv_eps, "--adversarial-steps",
                   ns.adv_steps]
    # robust-distill: the loader's photos stay clean for the starting bundle as a teacher; half of each batch is
    # degraded in the step for the student (`--corrupt-fraction`: the robust preset's kinds and ranges)
    recipes = {"control": [], "adversarial": adversarial, "robust": ["--augment", "robust"],
               "robust+adversarial": ["--augment", "robust", *adversarial],
               "robust-distill": ["--teacher", ns.bundle, "--corrupt-fraction", ns.corrupt_fraction]}
    arms = [a.strip() for a in ns.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in recipes]
    if unknown:
        ap.error(f"--arms: unknown {unknown}; choose from {', '.join(recipes)}")
    walls = {a: run_timed([*cli, "train", "--out", str(out / a), *tune, *recipes[a]]) for a in arms}
    models = {"default": Path(ns.bundle), **{a: out / a / "bundle" for a in arms}}
    reports = {}
    for name, bundle in models.items():
        limit = ["--limit", ns.limit] if ns.limit else []
        run_timed([*cli, "robustness", "--model", str(bundle), "--out", str(out / f"robustness-{name}"), "--eps", ns.eps,
              "--pgd-steps", ns.pgd_steps, "--severities", ns.severities, *limit, *data, "-q"])
        reports[name] = json.loads((out / f"robustness-{name}" / "robustness.json").read_text())

    eps = ns.eps.split(",")
    head = ("| model | fine-tune min | clean | " + " | ".join(f"FGSM {e}" for e in eps) + " | "
            + " | ".join(f"PGD-{ns.pgd_steps} {e}" for e in eps) + " | mean corruption |")
    rows = [head, "|---|" + "---|" * (3 + 2 * len(eps))]
    for name, r in reports.items():
        acc = {(a["attack"], a["eps"]): a["top1"] for a in r["attacks"]}
        mean_c = sum(r["corruption_mean"].values()) / max(1, len(r["corruption_mean"]))
        cells = [f"{100 * acc[(k, float(e))]:.1f}" for k in ("fgsm", "pgd") for e in eps]
        wall = f"{walls[name] / 60:.1f}" if name in walls else "-"
        rows.append(f"| {name} | {wall} | {100 * r['clean_top1']:.1f} | " + " | ".join(cells)
                    + f" | {100 * mean_c:.1f} |")
    corr = sorted(reports["default"]["corruption_mean"])
    crow = ["| model | " + " | ".join(corr) + " |", "|---|" + "---|" * len(corr)]
    crow += [f"| {n} | " + " | ".join(f"{100 * r['corruption_mean'][c]:.1f}" for c in corr) + " |"
             for n, r in reports.items()]
    n = reports["default"]["n_images"]
    body = "\n".join([
        (f"Grocery Store val ({n} photos). Attacks: L-inf in pixel space before normalisation (eps in pixel "
         f"levels, x/255), on the fine head; PGD with random start and step 2.5 eps / steps; all in fp32. "
         f"Fine-tunes from `{ns.bundle}`: {ns.epochs} epochs at LR {ns.lr}; adversarial = `--adversarial "
         f"{ns.adversarial} --adversarial-eps {ns.adv_eps} --adversarial-steps {ns.adv_steps}` (half of each "
         "batch replaced by attacks made with the model in eval mode); robust = `--augment robust` (JPEG q10-60, "
         "blur, noise sigma 0.04-0.15 and stronger lighting, each on a fifth of the photos); robust-distill = "
         f"`--teacher BUNDLE --corrupt-fraction {ns.corrupt_fraction}` (one of JPEG, blur, noise, lighting in those "
         "ranges on that share of each batch, in the step; the teacher sees the clean photos); control = the same "
         f"fine-tune with neither. Arms: {', '.join(arms)}."),
        "",
        *rows,
        "",
        f"Corruptions, mean top-1 over severities {ns.severities}:",
        "",
        *crow,
        "",
        f"Reports and plots: {out}/robustness-*/.",
    ])
    command = ("python benchmarks/robustness_grocery.py " + shlex.join(sys.argv[1:])).strip()
    append_section("Robustness: default vs robustness fine-tunes (grocery val)", command, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
