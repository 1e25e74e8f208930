"""What the study, run and search reports share: their error, a tolerant JSON reader
and the number formats (`—` for a missing value)."""

from __future__ import annotations

import math
from pathlib import Path

from kmnist_lab import runs
from kmnist_lab.errors import KmnistLabError


class ReportError(KmnistLabError):
    """The path is not a run, study or search folder, or cannot be written."""


def read_json_or_empty(path: Path) -> dict:
    return runs.read_json(path) or {}


def pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def num(x, fmt="{:.3f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def diff_points(ours, original: dict) -> str:
    """Ours minus the report, in percentage points (0 inside a reported range)."""
    if ours is None:
        return "—"
    if original.get("test_accuracy") is not None:
        return f"{100 * (ours - original['test_accuracy']):+.2f}"
    rng = original.get("test_accuracy_range")
    if rng:
        lo, hi = rng
        gap = ours - lo if ours < lo else (ours - hi if ours > hi else 0.0)
        return f"{100 * gap:+.2f}"
    return "—"


def original_acc(original: dict) -> str:
    if original.get("test_accuracy") is not None:
        return pct(original["test_accuracy"])
    rng = original.get("test_accuracy_range")
    return f"{100 * rng[0]:.2f}–{100 * rng[1]:.2f}" if rng else "—"
