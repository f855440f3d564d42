"""The summary table of a run (the plugin's, and the report command's): rows folded over seeds, the change
against stored baselines, and which differences to the best row are significant."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .baselines import Baselines
from .compare import mark_versus_best
from .records import RunRecord
from .table import Row, fold, render

LEGEND = ("vs best: ΔF1 to the best row on the same data; * significant (p < 0.05: Welch's t-test over seeds,\n"
          "else a paired randomization test over test documents); ? no saved predictions to test")


def rows_for(records: list[RunRecord], baselines: Baselines | None = None, versus_best: bool = True,
             per_seed: bool = False, data_dirs: Iterable[str | Path] = ()) -> list[Row]:
    """``data_dirs``: where the data of predicted tags saved alone (a baselines file's) may be."""
    rows = fold(records, per_seed)
    judge_by_current_floors(rows)
    if baselines is not None:
        for row in rows:
            stored = baselines.f1s(row.first.case, row.first.mode, row.first.dataset.get("fingerprint"))
            row.baseline = sum(stored) / len(stored) if stored else None
            below = [baselines.regression(r) for r in row.records]
            row.regression = "below the baseline's bound" if any(below) else ""
    if versus_best and not per_seed:  # a row a seed: seeds of one case are no rivals
        mark_versus_best(rows, data_dirs=data_dirs)
    return rows


def judge_by_current_floors(rows: list[Row]) -> None:
    """Each row is judged against the floor its case's spec has now for the data it ran on (the suites in
    bench/suites), not the one it had when it ran; a case no suite has any more keeps its record's."""
    from ..known_data import DataIdentity
    from ..specs import SpecError, resolve_suite

    try:
        specs = {s.name: s for s in resolve_suite("all")}
    except SpecError:
        return
    for row in rows:
        spec, r = specs.get(row.first.case), row.first
        if spec is None or r.synthetic or not r.dataset:
            continue
        data = DataIdentity(r.dataset.get("name", ""),
                            r.dataset.get("full_fingerprint") or r.dataset.get("fingerprint", ""))
        row.floor, row.floor_note = spec.floor_for(r.mode == "quick", data)


def summary(records: list[RunRecord], baselines: Baselines | None = None, columns: str = "default",
            fmt: str = "github", per_seed: bool = False) -> tuple[str, list[Row]]:
    rows = rows_for(records, baselines, per_seed=per_seed)
    text = render(rows, columns, fmt)
    if any(r.versus_best for r in rows):
        text += "\n" + LEGEND
    return text, rows
