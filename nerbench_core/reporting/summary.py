"""The summary table of a run (the plugin's, and the report command's): rows folded over seeds, the change
against stored baselines, and which differences to the best row are significant."""
from __future__ import annotations

from .baselines import Baselines
from .compare import mark_versus_best
from .records import RunRecord
from .table import Row, fold, render

LEGEND = ("vs best: ΔF1 to the best row on the same data; * significant (p < 0.05: Welch's t-test over seeds, "
          "else a paired randomization test over test documents), ? no saved predictions to test")


def rows_for(records: list[RunRecord], baselines: Baselines | None = None, versus_best: bool = True,
             per_seed: bool = False) -> list[Row]:
    rows = fold(records, per_seed)
    if baselines is not None:
        for row in rows:
            stored = baselines.f1s(row.first.case, row.first.mode, row.first.dataset.get("fingerprint"))
            row.baseline = sum(stored) / len(stored) if stored else None
    if versus_best:
        mark_versus_best(rows)
    return rows


def summary(records: list[RunRecord], baselines: Baselines | None = None, columns: str = "default",
            fmt: str = "github", per_seed: bool = False) -> tuple[str, list[Row]]:
    rows = rows_for(records, baselines, per_seed=per_seed)
    text = render(rows, columns, fmt)
    if any(r.versus_best for r in rows):
        text += "\n" + LEGEND
    return text, rows
