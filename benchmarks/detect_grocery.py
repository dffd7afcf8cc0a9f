"""The product detector measured: held-out composites, the real fridge photos, dense phone-size shelves, speed.

    python benchmarks/detect_grocery.py --detector DET [--model BUNDLE] [--data GROCERY] [--fridge PATH]
                                        [--canvases 200] [--out DIR]

1. Held-out composites: canvases made only of the products the detector's run held out of training
   (the same seeded split its card records), from a seed the run never used for selection: class-agnostic
   AP@0.5, AP@[.5:.95], share of canvases counted exactly, count MAE.
2. The fridge sample (six real photos, VOC boxes; products of no skulens dataset): recall at IoU 0.5,
   false boxes per photo, AP@0.5, count MAE, and (with --model) how many boxes the grocery classifier
   leaves "unknown" (none of these products is in its catalogue); report.md and grid.png in --out.
3. Dense shelves: 4000x3000 composites with 300+ products, tiled: count error and seconds per photo.
4. Speed: photos/s end to end (JPEG bytes -> decode -> detect -> classify every box) at 1 megapixel,
   PyTorch and ONNX Runtime detectors side by side in one run; and the run's training time from its card.
Appends a section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section

DEFAULT_FRIDGE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fridge-objects-sample"


def held_out_canvases(data: Path, card, n: int, size: tuple[int, int] = (512, 512), start: int = 0, **cfg):
    """Composites of the catalogue products the training run held out (the seeded split its card records),
    from a seed the run never used for selection."""
    from skulens.data.catalogue import load_catalogue
    from skulens.detect.synth import CompositeGenerator, SynthConfig, held_out_cutouts

    recipe = card.training.get("recipe", {})
    cut, held = held_out_cutouts(load_catalogue(data), recipe.get("holdout_products", 0.15), recipe.get("seed", 0),
                                 recipe.get("several_items", ()))  # photos of several items: pasted nowhere by that run
    config = SynthConfig(width=size[0], height=size[1], sources={"catalogue": 1.0}, **cfg)
    gen = CompositeGenerator(cut, config, recipe.get("seed", 0) + 104729)
    return [gen.gen(start + i) for i in range(n)], held


def _errors(report) -> str:
    """Where the count errors come from: false boxes by kind, and the true labels missed most."""
    false = ", ".join(f"{n} {kind}" for kind, n in report.errors["false"].items())
    missed = sorted(((v["missed"], label, v["boxes"]) for label, v in report.errors["missed"].items() if v["missed"]),
                    reverse=True)
    top = ", ".join(f"{label} {m}/{b}" for m, label, b in missed[:6])
    return (f"Count errors over {report.images} photos: false boxes {false}; missed boxes by true label "
            f"(missed/boxes) {top or 'none'}.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", required=True)
    ap.add_argument("--model", default=None, help="classification bundle (per-box recognition, speed row)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--fridge", default=str(DEFAULT_FRIDGE))
    ap.add_argument("--canvases", type=int, default=200)
    ap.add_argument("--dense", type=int, default=2, help="4000x3000 dense composites")
    ap.add_argument("--speed-photos", type=int, default=10, help="1 MP photos for the speed row (0: no speed row)")
    ap.add_argument("--device", default="cpu", help="where the detector and the classifier run for the held-out, fridge and dense sections (default: cpu; the speed row times the detector on the CPU)")
    ap.add_argument("--out", default=f"runs/bench-detect-{time.strftime('%Y%m%d-%H%M%S')}")
    ns = ap.parse_args()


    from skulens.data.locate import resolve_data
    from skulens.deploy.bench import bench_detection, detection_markdown
    from skulens.detect.annotations import load_annotations
    from skulens.detect.detector import load_detector
    from skulens.detect.evaluate import evaluate_counting, evaluate_detections
    from skulens.detect.onnx import export_detector

    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    data = resolve_data(ns.data)
    det = load_detector(ns.detector, device=ns.device)
    model = None
    if ns.model:
        from skulens.models.predictor import load_model

        model = load_model(ns.model, device=ns.device)
    lines = []

    # 1. held-out composites
    canvases, held = held_out_canvases(data, det.card, ns.canvases)
    dets = det.detect([im for im, _ in canvases], tiles="off")
    thr = det.config.min_score  # chosen on the run's own held-out canvases (another seed than these)
    comp = evaluate_detections([a for _, a in canvases], dets, score_threshold=thr)
    boxes = sum(len(a) for _, a in canvases)
    lines += ["### Held-out composites (products never in a training canvas)", "",
              (f"{ns.canvases} canvases 512x512, {boxes} boxes, {len(held)} held-out products "
              f"({', '.join(held[:6])}, ...); score threshold {thr} (the detector's own)."), "",
              "| AP@0.5 | AP@[.5:.95] | recall@0.5 | false boxes / canvas | count exact | count MAE |",
              "|---|---|---|---|---|---|",
              (f"| {comp.ap50:.3f} | {comp.ap:.3f} | {comp.recall50:.3f} | {comp.false_per_image:.2f} | "
              f"{comp.count_exact:.1%} | {comp.count_mae:.2f} |"), "", _errors(comp), ""]
    print(lines[-4], lines[-2], sep="\n", flush=True)

    # 2. the fridge sample
    fridge = Path(ns.fridge)
    if fridge.exists():
        rep = evaluate_counting(det, load_annotations(fridge), model=model, min_score=thr, out_dir=out / "fridge",
                                progress=False)
        unknown = ""
        if model is not None and rep.per_product:
            unknown = f" The grocery classifier left {rep.per_product.get('unknown_boxes', 0)} of the detected " \
                      "boxes `unknown` (none of these products is in its catalogue)."
        lines += ["### Fridge sample (6 real photos, 12 products of no skulens dataset)", "",
                  "| AP@0.5 | AP@[.5:.95] | recall@0.5 | false boxes / photo | count exact | count MAE |",
                  "|---|---|---|---|---|---|",
                  (f"| {rep.ap50:.3f} | {rep.ap:.3f} | {rep.recall50:.3f} | {rep.false_per_image:.2f} | "
                  f"{rep.count_exact:.1%} | {rep.count_mae:.2f} |"), "",
                  "Per photo (truth / found / false): " + ", ".join(
                      f"{Path(r['file']).name} {r['truth']}/{r['predicted']}/{r['false']}" for r in rep.per_image)
                  + "." + unknown + f" Annotated grid: `{out / 'fridge' / 'grid.png'}`.", "", _errors(rep), ""]
        print(lines[-6], flush=True)

    # 3. dense phone-size shelves
    if ns.dense:
        dense, _ = held_out_canvases(data, det.card, ns.dense, size=(4000, 3000), min_objects=300, max_objects=380,
                                     scale=(0.05, 0.09), layouts={"shelf": 1.0}, empty_share=0.0)
        wide = det.with_settings(max_detections=2000)
        t0 = time.perf_counter()
        dd = wide.detect([im for im, _ in dense])
        sec = (time.perf_counter() - t0) / len(dense)
        drep = evaluate_detections([a for _, a in dense], dd, score_threshold=thr)
        truth = [len(a) for _, a in dense]
        found = [int((d.scores >= thr).sum()) for d in dd]
        lines += ["### Dense shelves at phone size (4000x3000, tiled)", "",
                  f"{len(dense)} composites, products per photo (truth -> found): "
                  + ", ".join(f"{t} -> {f}" for t, f in zip(truth, found))
                  + f"; AP@0.5 {drep.ap50:.3f}, recall {drep.recall50:.3f}, {sec:.1f} s per photo.", ""]
        print(lines[-2], flush=True)

    # 4. speed at 1 MP, end to end
    if ns.speed_photos:
        photos = []
        for im, _ in held_out_canvases(data, det.card, ns.speed_photos, size=(1155, 866), start=5000)[0]:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            photos.append(buf.getvalue())
        export_detector(ns.detector)  # DET/detector.onnx, checked against PyTorch
        table = detection_markdown(bench_detection(ns.detector, photos, model=model, repeats=1))
        lines += ["### Speed at 1 megapixel (1155x866 JPEG, end to end: decode, detect, classify every box)", "",
                  table]
        print(table, flush=True)

    tr = det.card.training
    lines += ["### Training", "",
              (f"{tr.get('steps_run')} steps in {tr.get('minutes')} min (stopped by: {tr.get('stopped')}); best held-out "
              f"step {tr.get('best_step')}; recipe {json.dumps(tr.get('recipe', {}))}."), ""]
    body = "\n".join(lines)
    (out / "results.md").write_text(body, encoding="utf-8")
    append_section("Product detection and counting", "python benchmarks/detect_grocery.py "
                   + shlex.join(sys.argv[1:]), body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
