"""Turn an `EvalReport` into files a person reads: report.json, report.md and three PNG figures.

This is the I/O edge of the evaluation stage; the numbers all come from `skulens.evaluate.metrics`.
matplotlib is imported inside the plotting functions, and only its object-oriented Figure API with
the Agg canvas is used: no pyplot global state, no GUI backend, and `import skulens.evaluate`
stays cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skulens.evaluate import markdown
from skulens.evaluate.metrics import EvalReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["IN_SAMPLE_NOTE", "format_summary", "write_report"]

# What a report on the split a run selected on says: every choice below was fitted to those photos.
IN_SAMPLE_NOTE = ("the epoch, EMA or raw weights, coarse rule, attribute thresholds and temperatures were chosen on "
                  "this {split}: every number here is optimistic (in-sample), ECE and the reliability diagram most")

SCHEMA_VERSION = 1
SUMMARY_KEYS = ("top1", "top5", "coarse_top1", "coarse_top1_derived", "macro_f1", "ece", "attribute_map")
_DPI = 120

# Headline rows: (label, EvalReport field, kind). "pct" values are fractions shown as percentages
# with changes in percentage points; "num" values are shown as-is (ECE and NLL: lower is better).
_HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("top-1 accuracy", "top1", "pct"),
    ("top-5 accuracy", "top5", "pct"),
    ("macro F1", "macro_f1", "pct"),
    ("coarse top-1 (coarse prediction)", "coarse_top1", "pct"),
    ("coarse top-1 (from fine probs)", "coarse_top1_derived", "pct"),
    ("attribute mAP", "attribute_map", "pct"),
    ("attribute micro F1", "attribute_f1", "pct"),
    ("ECE (lower is better)", "ece", "num"),
    ("NLL (lower is better)", "nll", "num"),
    ("samples", "n", "int"),
)


# --------------------------------------------------------------------------- formatting


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "int":
        return str(int(value))
    return f"{value:.4f}"


def _fmt_delta(value: float | None, base: float | None, kind: str) -> str:
    if value is None or base is None:
        return "n/a"
    delta = value - base
    if kind == "pct":
        return f"{100 * delta:+.2f} pp"
    if kind == "int":
        return f"{int(delta):+d}"
    return f"{delta:+.4f}"


def _with_ci(report: EvalReport | None, key: str, kind: str) -> str:
    """The value, and its 95 % bootstrap interval where the report has one: "85.50% [81.4-89.2]"."""
    if report is None:
        return "n/a"
    text = _fmt(getattr(report, key), kind)
    ci = getattr(report, f"{key}_ci", None)
    return text if ci is None or kind != "pct" else f"{text} [{100 * ci[0]:.1f}-{100 * ci[1]:.1f}]"


def _headline_rows(report: EvalReport, baseline: EvalReport | None) -> list[tuple[str, str, str, str]]:
    """(label, model, baseline, change) for every headline metric that either report has."""
    rows = []
    for label, key, kind in _HEADLINE:
        value = getattr(report, key)
        base = getattr(baseline, key) if baseline is not None else None
        if value is None and base is None:
            continue  # no coarse head / no attributes: the row would only say n/a
        if key == "top5" and 0 < len(report.class_names) <= 5:
            continue  # top-5 of 5 classes or fewer is every class: 100 %, always
        rows.append((label, _with_ci(report, key, kind), _with_ci(baseline, key, kind),
                     _fmt_delta(value, base, kind)))
    return rows


def format_summary(report: EvalReport, baseline: EvalReport | None = None) -> str:
    """A few aligned lines for the terminal: each headline metric, with the baseline if given."""
    rows = _headline_rows(report, baseline)
    width = max(len(r[0]) for r in rows)
    lines = []
    for label, value, base, change in rows:
        line = f"{label:<{width}}  {value:>8}"
        if baseline is not None:
            line += f"   baseline {base:>8}   change {change:>10}"
        lines.append(line)
    return "\n".join(lines)


def _link_target(path: str, out_dir: Path) -> str:
    # Links in report.md resolve against its folder; sample paths are absolute or relative to the cwd.
    try:
        target = os.path.relpath(Path(path).resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows: no relative path exists
        target = str(Path(path).resolve())
    return markdown.link(Path(target).as_posix())


# --------------------------------------------------------------------------- markdown


_CI_NOTE = ("In brackets: 95 % bootstrap intervals (1000 resamples of these photos): how far a number could "
            "move on another sample of photos like these.")


def _md_headline(report: EvalReport, baseline: EvalReport | None, baseline_name: str) -> list[str]:
    rows = _headline_rows(report, baseline)
    note = [_CI_NOTE, ""] if report.top1_ci is not None else []
    if baseline is None:
        return ["## Headline", "", *note, *markdown.table(("metric", "model"), [(r[0], r[1]) for r in rows])]
    return [
        "## Headline: before vs after fine-tuning",
        "",
        *note,
        f"Baseline: {baseline_name}.",
        "",
        *markdown.table(("metric", "model", "baseline", "change"), list(rows)),
    ]


def _occurring(report: EvalReport) -> list[Any]:
    """The classes with a photo in the split or a prediction: macro-F1's classes. The others (another
    catalogue's split, a subset) have no score to show, and read as the worst classes at F1 0."""
    predicted = np.asarray(report.confusion, dtype=np.int64).sum(axis=0) if report.confusion else None
    return [c for i, c in enumerate(report.per_class)
            if c.support > 0 or (predicted is not None and i < len(predicted) and predicted[i] > 0)]


def _md_per_class(report: EvalReport) -> list[str]:
    shown = _occurring(report)
    rows = [(c.name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", c.support) for c in shown]
    left = len(report.per_class) - len(shown)
    said = (f"{left} class(es) of the model with no photo in this split and never predicted are left out "
            "(report.json lists them, at 0).")
    note = [said, ""] if left else []
    return ["## Per-class metrics", "", *note, *markdown.table(("class", "precision", "recall", "F1", "support"), rows)]


def _md_attributes(report: EvalReport) -> list[str]:
    if not report.per_attribute:
        return []
    rows = [
        (a.name, "n/a" if a.ap is None else f"{a.ap:.3f}", f"{a.f1:.3f}", f"{a.threshold:.3f}", a.support)
        for a in report.per_attribute
    ]
    header = ("attribute", "AP", "F1", "threshold", "positives")
    return ["## Attributes", "", *markdown.table(header, rows)]


def _md_confused(report: EvalReport) -> list[str]:
    if not report.most_confused:
        return ["## Most confused pairs", "", "No misclassifications."]
    rows = [(p.true, p.predicted, p.count) for p in report.most_confused]
    return ["## Most confused pairs", "", *markdown.table(("true", "predicted", "count"), rows)]


def _md_top_losses(report: EvalReport, out_dir: Path) -> list[str]:
    lines = ["## Highest-loss samples", ""]
    for rank, t in enumerate(report.top_losses, 1):
        what = f"true **{markdown.cell(t.true)}**, predicted **{markdown.cell(t.predicted)}** "
        what += f"({100 * t.confidence:.1f}%), loss {t.loss:.3f}"
        if not t.path:
            lines.append(f"{rank}. sample #{t.index}: {what}")
            continue
        indent = " " * len(f"{rank}. ")  # continuation lines must line up to stay inside the list item
        image = f"{indent}![{markdown.cell(t.true)}]({_link_target(t.path, out_dir)})"
        lines += [f"{rank}. {markdown.code(t.path)}: {what}", "", image, ""]
    return lines


def _render_markdown(
    report: EvalReport,
    out_dir: Path,
    title: str,
    baseline: EvalReport | None,
    baseline_name: str,
    extra: dict[str, Any],
) -> str:
    lines = [f"# {title}", "", *_md_headline(report, baseline, baseline_name), ""]
    scalars = {k: v for k, v in extra.items() if not _is_records(v)}
    if scalars:
        lines += ["## Run details", "", *markdown.table(("key", "value"), [(k, _json_text(v)) for k, v in scalars.items()])]
        lines.append("")
    for key, records in extra.items():
        if _is_records(records):  # e.g. the per-epoch history: one row per record
            cols = tuple(dict.fromkeys(c for r in records for c in r))
            lines += [f"## {key.replace('_', ' ').capitalize()}", "",
                      *markdown.table(cols, [tuple(_json_text(r.get(c, "")) for c in cols) for r in records]), ""]
    lines += ["## Figures", "", "![Confusion matrix](confusion.png)", "", "![Reliability](reliability.png)"]
    lines += ["", "![Per-class F1](per_class.png)", ""]
    for section in (_md_per_class(report), _md_attributes(report), _md_confused(report)):
        if section:
            lines += [*section, ""]
    lines += _md_top_losses(report, out_dir)
    return "\n".join(lines).rstrip() + "\n"


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, dict) for r in value)


def _json_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


# --------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)  # attach the non-interactive Agg canvas; works headless
    return fig


def _label_font(n_labels: int) -> float:
    # Shrink tick labels as classes are added, but never below 6 pt, the smallest that stays readable.
    return max(6.0, min(10.0, 450.0 / max(n_labels, 1)))


def _plot_confusion(report: EvalReport, path: Path) -> None:
    cm = np.asarray(report.confusion, dtype=np.float64)
    n = cm.shape[0]
    support = cm.sum(axis=1, keepdims=True)
    # Row-normalised (recall per true class); classes absent from this split stay an all-zero row.
    norm = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    side = max(6.0, 3.0 + 0.18 * n)  # 0.18 in (13 pt) per class row: room for a 6 pt label at 81 classes
    font = _label_font(n)
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=report.class_names, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels=report.class_names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (rows normalised by true class)")
    if n <= 15:  # numbers only fit in the cells of small matrices
        for i, j in zip(*np.nonzero(cm), strict=True):
            colour = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=font, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)


def _plot_reliability(report: EvalReport, path: Path) -> None:
    n_bins = len(report.reliability)
    width = 1.0 / n_bins
    centres = (np.arange(n_bins) + 0.5) * width
    conf = np.array([b[0] for b in report.reliability])
    acc = np.array([b[1] for b in report.reliability])
    used = np.array([b[2] for b in report.reliability]) > 0
    fig = _new_figure(6.0, 6.0)
    ax = fig.add_subplot()
    ax.bar(centres[used], acc[used], width=width, edgecolor="black", color="tab:blue", label="accuracy")
    # Hatched, unfilled gap bars: they point down when the model is underconfident and then overlap
    # the accuracy bars, which a filled bar would hide.
    ax.bar(
        centres[used],
        conf[used] - acc[used],
        bottom=acc[used],
        width=width,
        fill=False,
        hatch="//",
        edgecolor="tab:red",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE = {report.ece:.4f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)


def _plot_per_class(report: EvalReport, path: Path) -> None:
    ranked = sorted(_occurring(report), key=lambda c: c.f1)
    n = len(ranked)
    font = _label_font(n)
    fig = _new_figure(7.0, max(3.0, 1.0 + 0.15 * n))  # 0.15 in (11 pt) per bar for a 6 pt label
    ax = fig.add_subplot()
    ax.barh(np.arange(n), [c.f1 for c in ranked], color="tab:blue")
    ax.set_yticks(np.arange(n), labels=[c.name for c in ranked], fontsize=font)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, n - 0.5)
    ax.set_xlabel("F1")
    ax.set_title("Per-class F1 (worst at the bottom)")
    fig.tight_layout()
    fig.savefig(path)


# --------------------------------------------------------------------------- entry point


def _report_json(report: EvalReport, baseline: EvalReport | None, extra: dict[str, Any]) -> dict[str, Any]:
    model = report.to_dict()
    return {
        "schema": SCHEMA_VERSION,
        "summary": {key: model[key] for key in SUMMARY_KEYS},
        "model": model,
        "baseline": None if baseline is None else baseline.to_dict(),
        "extra": extra,
    }


def write_report(
    report: EvalReport,
    out_dir: str | os.PathLike[str],
    *,
    title: str = "skulens evaluation",
    baseline: EvalReport | None = None,
    baseline_name: str = "linear probe (before fine-tuning)",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write report.json, confusion.png, reliability.png, per_class.png and report.md into out_dir.

    Returns the path of report.md. ``extra`` (run details: checkpoint, split, config) goes into
    the JSON as-is, so it must be JSON-serialisable.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    payload = _report_json(report, baseline, extra)
    # allow_nan=False: fail here rather than write a file that strict JSON readers reject.
    (out / "report.json").write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    plots: tuple[tuple[str, Callable[[EvalReport, Path], None]], ...] = (
        ("confusion.png", _plot_confusion),
        ("reliability.png", _plot_reliability),
        ("per_class.png", _plot_per_class),
    )
    for name, plot in plots:
        plot(report, out / name)
    md_path = out / "report.md"
    md_path.write_text(_render_markdown(report, out, title, baseline, baseline_name, extra), encoding="utf-8")
    return md_path
