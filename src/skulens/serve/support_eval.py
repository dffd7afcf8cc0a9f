"""Score support replies against a question set: `label,question,expected,kind` rows.

`expected` is `yes` / `no` (a yes/no verdict from structured facts), `handoff` (a person must take over),
or `text:a|b` (an answer containing one of the alternatives, case-insensitive). A reply is *correct* when it
gives the expected verdict or text, or hands off where a hand-off is expected; a *confident wrong* reply is
a yes/no verdict opposite to the expected one (the failure a shop cannot afford).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .support import SupportAnswer

__all__ = ["Question", "SupportReport", "load_questions", "score_reply", "summarise"]

OUTCOMES = ("correct", "handed_off", "missed", "wrong", "confident_wrong")


@dataclass(frozen=True)
class Question:
    label: str
    question: str
    expected: str  # yes | no | handoff | text:a|b
    kind: str


@dataclass
class SupportReport:
    n: int
    correct: int
    handoffs: int
    confident_wrong: int
    confident_wrong_attribute: int  # on kind attribute_yesno, the goal's zero
    by_kind: dict[str, tuple[int, int]]  # kind -> (correct, n)
    failures: list[tuple[Question, str, str]] = field(default_factory=list)  # (question, outcome, reply text)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def handoff_rate(self) -> float:
        return self.handoffs / self.n if self.n else 0.0


def load_questions(path: str | Path) -> list[Question]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i, row in enumerate(rows, start=2):
        expected = (row.get("expected") or "").strip()
        if not (expected in ("yes", "no", "handoff") or expected.startswith("text:")) or not row.get("label"):
            raise ValueError(f"{path}:{i}: needs label, question and expected yes|no|handoff|text:..., got {row}")
        out.append(Question(row["label"].strip(), (row.get("question") or "").strip(), expected,
                            (row.get("kind") or "").strip()))
    return out


def score_reply(q: Question, reply: SupportAnswer) -> str:
    """One of OUTCOMES: correct; handed_off (an answer was expected); missed (an answer where a hand-off
    was expected, or a text answer without the fact); wrong (a yes/no expected, something else given);
    confident_wrong (the opposite yes/no verdict)."""
    if q.expected == "handoff":
        return "correct" if reply.handoff else "missed"
    if reply.handoff:
        return "handed_off"
    if q.expected in ("yes", "no"):
        if reply.verdict == q.expected:
            return "correct"
        return "confident_wrong" if reply.verdict in ("yes", "no") else "wrong"
    needles = [n.strip().lower() for n in q.expected[len("text:"):].split("|") if n.strip()]
    return "correct" if any(n in (reply.answer or "").lower() for n in needles) else "missed"


def summarise(questions: Sequence[Question], replies: Iterable[SupportAnswer]) -> SupportReport:
    outcomes = Counter()
    by_kind: dict[str, list[int]] = {}
    failures = []
    handoffs = wrong_attr = 0
    for q, reply in zip(questions, replies, strict=True):
        outcome = score_reply(q, reply)
        outcomes[outcome] += 1
        handoffs += reply.handoff
        wrong_attr += outcome == "confident_wrong" and q.kind == "attribute_yesno"
        k = by_kind.setdefault(q.kind, [0, 0])
        k[0] += outcome == "correct"
        k[1] += 1
        if outcome != "correct":
            failures.append((q, outcome, reply.answer or f"[hand-off] {reply.reason}"))
    return SupportReport(len(questions), outcomes["correct"], handoffs, outcomes["confident_wrong"], wrong_attr,
                         {k: (v[0], v[1]) for k, v in sorted(by_kind.items())}, failures)
