"""Is model A really better than model B? Paired verdicts from saved predictions, and the table's "vs best" column.

Two cases are compared on the same test data only (the same data fingerprint; anything else is refused). With one
run each, a paired test on their saved test predictions: a paired bootstrap of ΔF1 over documents for the interval,
approximate randomization for the p-value (stats.paired_comparison). With several seeds each, Welch's t-test over
the seeds' F1 decides (it sees training randomness, which one run's bootstrap cannot), and the paired test of the
first seeds is quoted beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import stats
from .predictions import SplitPredictions
from .store import saved_predictions
from .table import Row

ALPHA = 0.05


class CompareError(ValueError):
    """Two rows that cannot be compared (different test data, no saved predictions); the message says why."""


def saved_test_predictions(row: Row, data_dirs: Iterable[str | Path] = ()) -> SplitPredictions | None:
    """The saved test predictions of the row's first seed that has them (``data_dirs``: store.saved_predictions); a
    file that cannot be read is a CompareError naming it."""
    for r in row.records:
        try:
            found = saved_predictions(r, "test", data_dirs)
        except (OSError, ValueError, EOFError) as err:  # gzip's BadGzipFile is an OSError, a bad encoding a ValueError
            raise CompareError(f"{r.case}: its saved test predictions cannot be read ({err})") from None
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class Versus:
    paired: stats.Paired | None
    seeds: stats.SeedComparison | None
    sentence: str


def versus(a: Row, b: Row, resamples: int = 10000, name_a: str | None = None, name_b: str | None = None,
           data_dirs: Iterable[str | Path] = ()) -> Versus:
    """The verdict between two rows (each a case's seeds) on the same test data (``data_dirs``: where the data of
    predicted tags saved alone may be, store.saved_predictions)."""
    name_a, name_b = name_a or a.first.case, name_b or b.first.case
    fa, fb = a.first.dataset.get("fingerprint"), b.first.dataset.get("fingerprint")
    if fa != fb:
        raise CompareError(f"{name_a} and {name_b} ran on different test data (fingerprints {fa} and {fb}; "
                           f"{a.first.mode} and {b.first.mode} runs): a verdict needs the same sentences")
    pa, pb = saved_test_predictions(a, data_dirs), saved_test_predictions(b, data_dirs)
    paired = None
    if pa is not None and pb is not None:
        if pa.gold != pb.gold:
            raise CompareError(f"{name_a} and {name_b}: their saved predictions hold different gold tags")
        unit, groups = stats.choose_unit(pa.docs)
        paired = stats.paired_comparison(pa.gold, pa.pred, pb.pred, groups, resamples=resamples, seed=0)
    seeds = stats.seed_comparison(a.f1s, b.f1s) if len(a.f1s) > 1 and len(b.f1s) > 1 else None
    if paired is None and seeds is None:
        raise CompareError(f"{name_a} and {name_b}: no saved test predictions and fewer than 2 seeds each: "
                           "nothing to test (records from before predictions were saved, or a baselines file's "
                           "predicted tags without their data: give the data folder, --data-dir)")
    return Versus(paired, seeds, stats.verdict(name_a, name_b, paired, seeds, alpha=ALPHA))


def mark_versus_best(rows: list[Row], resamples: int = 2000, data_dirs: Iterable[str | Path] = ()) -> None:
    """Fill each row's ``versus_best``: ΔF1 to the best row on the same test data and mode, with ``*`` where the
    difference is significant (p < 0.05: seeds where both rows have several, else the paired test) and ``?``
    where it cannot be tested; ``best`` on the best row. Rows alone on their data get nothing."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.mean is not None and not row.first.synthetic:
            groups.setdefault((row.first.mode, row.first.dataset.get("fingerprint")), []).append(row)
    for group in groups.values():
        if len(group) < 2:
            continue
        best = max(group, key=lambda r: r.mean)
        best.versus_best = "best"
        for row in group:
            if row is best:
                continue
            delta = f"{100 * (row.mean - best.mean):+.2f}"
            try:
                v = versus(row, best, resamples, data_dirs=data_dirs)
            except CompareError:
                row.versus_best = delta + "?"
                continue
            p = v.seeds.p_value if v.seeds is not None else v.paired.p_value
            row.versus_best = delta + ("*" if p is not None and p < ALPHA else "")
