"""Figures of a results table: PNGs and an ``index.md`` page that links them. Matplotlib (Agg), no torch.

:func:`plot_all` draws, from the rows of a table (``table.fold`` of loaded records):

- test F1 against training time, against peak memory and against parameters (one point per row; error bars: the
  standard deviation over seeds where a row has several, else the one record's 95% bootstrap interval; encoders and
  decoders in their own marker and colour);
- per-type test F1, rows x entity types, values written in the cells;
- entity errors from saved test predictions (first record of each row with a readable predictions file): the
  entity-type confusion matrix and the error classes of :mod:`.errors`, one grid for all rows;
- training loss and dev F1 against epoch, one line per row.

A figure whose data no row has is skipped, with a line in ``index.md`` saying why. At most seven PNGs are written.
Figures are drawn on Agg canvases without pyplot, so plotting neither needs a display nor touches the backend of a
program that imports this module after setting up pyplot itself.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # nobody chose a backend through pyplot yet: no display needed
    matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .. import atomic  # noqa: E402
from .errors import CLASS_NAMES, CLASSES, ErrorAnalysis, classify_predictions  # noqa: E402
from .exports import render_as  # noqa: E402
from .records import RunRecord  # noqa: E402
from .store import saved_predictions  # noqa: E402
from .table import ENTITY_TYPES, Row, count  # noqa: E402

DPI = 120
MAX_ERROR_ROWS = 6  # rows drawn in the errors grid (the others are named in index.md)
FAMILY_STYLE = {"encoder": ("o", "tab:blue"), "decoder": ("s", "tab:orange")}
OTHER_STYLE = ("^", "tab:gray")
SMOOTH_ABOVE = 150  # loss curves with more points than this are drawn as a running mean


@dataclass
class Figured:
    """One entry of index.md: a written PNG, or the reason it was skipped."""

    title: str
    file: str | None = None  # the PNG's name beside index.md
    caption: str = ""
    skipped: str = ""  # why there is no figure
    extra: str = ""  # Markdown after the figure (e.g. a table of its numbers)


# ---------------------------------------------------------------- labels


def data_label(record: RunRecord) -> str:
    """The data a record was scored on, in words: name (or source folder), sample, mode, synthetic."""
    d = record.dataset
    name = d.get("name") or (Path(d["source"]).name if d.get("source") else "") or "data"
    sample = d.get("sample")
    text = name if not sample or sample == "full" else f"{name} {sample}"
    text += f", {record.mode} mode"
    return text + (", synthetic" if record.synthetic else "")


def _data_of(rows: list[Row]) -> str:
    labels = list(dict.fromkeys(data_label(row.first) for row in rows))
    return "; ".join(labels) if len(labels) <= 2 else f"{len(labels)} data sets/modes"


def _names(rows: list[Row]) -> list[str]:
    """A short, distinct name per row: the case, with its label, mode and data where rows differ in them."""
    modes = {row.first.mode for row in rows}
    alike: dict[tuple, int] = {}  # rows that differ only in their label (--label set-ups of one case) show it
    for row in rows:
        k = (row.first.case, row.first.mode, row.first.dataset.get("fingerprint"), row.first.synthetic)
        alike[k] = alike.get(k, 0) + 1
    data = {(row.first.dataset.get("name"), row.first.dataset.get("fingerprint"), row.first.synthetic) for row in rows}
    names = []
    for row in rows:
        r = row.first
        key = (r.case, r.mode, r.dataset.get("fingerprint"), r.synthetic)
        name = r.case + (f" [{r.label}]" if r.label and alike[key] > 1 else "")
        extra = []
        if len(modes) > 1:
            extra.append(r.mode)
        if len(data) > 1 and len(modes) <= 1:
            extra.append(r.dataset.get("name") or r.dataset.get("fingerprint") or "")
        if r.synthetic and len(data) > 1:
            extra.append("synthetic")
        names.append(name + (f" ({', '.join(e for e in extra if e)})" if any(extra) else ""))
    seen: dict[str, int] = {}
    for i, n in enumerate(names):  # two rows still alike (e.g. the same case on two data samples): number them
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n} #{seen[n]}"
    return names


def _family(row: Row) -> str:
    return row.first.spec.get("family") or ""


# ---------------------------------------------------------------- figure helpers


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI, bbox_inches="tight")
    return name


def _f1_error(row: Row) -> tuple[float, float] | None:
    """Below/above error of the row's F1 (in F1 points): std over seeds, else the bootstrap interval, else None."""
    if row.std is not None:
        return 100 * row.std, 100 * row.std
    ci = row.first.metrics.get("test", {}).get("ci") or {}
    low, high = ci.get("low"), ci.get("high")
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return None
    return max(0.0, 100 * (row.mean - low)), max(0.0, 100 * (high - row.mean))


def _annotate(ax, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Labels beside the points, each placed where it hides no earlier label and no point (right of its point
    first, then below, left, and further up or down), inside the axes where it can be."""
    ax.autoscale_view()
    px_per_pt = ax.figure.dpi / 72
    size = 7
    points = [tuple(ax.transData.transform((x, y))) for x, y in zip(xs, ys)]
    frame = ax.get_window_extent()
    placed: list[tuple[float, float, float, float]] = [(x - 5, y - 5, x + 5, y + 5) for x, y in points]
    offsets = [(5, 3), (5, -11), (-5, 3), (-5, -11)] + [(5, dy) for k in range(1, 5) for dy in (3 + 9 * k, -11 - 9 * k)]

    def box(x, y, dx, dy, width):
        left = x + dx * px_per_pt - (width if dx < 0 else 0)
        bottom = y + dy * px_per_pt
        return left, bottom, left + width, bottom + 9 * px_per_pt

    def clear(b, own):
        return not any(b[0] < q[2] and q[0] < b[2] and b[1] < q[3] and q[1] < b[3]
                       for i, q in enumerate(placed) if i != own)

    for i, ((x, y), (dx_, dy_), label) in enumerate(zip(points, zip(xs, ys), labels)):
        width = 0.6 * size * px_per_pt * len(label)
        fits = [(dx, dy) for dx, dy in offsets if clear(box(x, y, dx, dy, width), i)]
        inside = [o for o in fits if frame.x0 <= box(x, y, *o, width)[0] and box(x, y, *o, width)[2] <= frame.x1]
        dx, dy = (inside or fits or offsets)[0]
        placed.append(box(x, y, dx, dy, width))
        ax.annotate(label, (dx_, dy_), xytext=(dx, dy), textcoords="offset points", fontsize=size,
                    ha="right" if dx < 0 else "left")


def _log_ticks(ax, text) -> None:
    """Plain tick labels on a log x axis (``text(value)``): every decade, and 2 and 5 times it."""
    def minor(x, _):
        lead = f"{x:.0e}"[0]
        return text(x) if lead in "25" else ""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: text(x)))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="x", which="minor", labelsize=8)


def _scatter(rows: list[Row], names: list[str], value, xlabel: str, title: str, out: Path, name: str,
             log: bool | None = None, ticks=lambda x: f"{x:g}") -> Figured | None:
    points = [(value(row), row, n) for row, n in zip(rows, names) if row.mean is not None]
    points = [(x, row, n) for x, row, n in points if x is not None and x > 0]
    if not points:
        return None
    fig = _figure(7.5, 5)
    ax = fig.add_subplot()
    families = []
    for x, row, _ in points:
        marker, colour = FAMILY_STYLE.get(_family(row), OTHER_STYLE)
        err = _f1_error(row)
        ax.errorbar([x], [100 * row.mean], yerr=None if err is None else [[err[0]], [err[1]]], fmt=marker,
                    color=colour, ecolor=colour, elinewidth=1, capsize=3, markersize=7)
        families.append(_family(row) or "other")
    xs = [p[0] for p in points]
    if log is None:  # log scale where the values span more than a decade
        log = max(xs) / min(xs) > 10
    if log:
        ax.set_xscale("log")
        _log_ticks(ax, ticks)
    ax.margins(x=0.08, y=0.08)
    _annotate(ax, xs, [100 * p[1].mean for p in points], [p[2] for p in points])
    handles = [Line2D([], [], marker=FAMILY_STYLE.get(f, OTHER_STYLE)[0], color=FAMILY_STYLE.get(f, OTHER_STYLE)[1],
                      linestyle="", label=f) for f in dict.fromkeys(families)]
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_xlabel(xlabel + (" (log scale)" if log else ""))
    ax.set_ylabel("test F1 (%)")
    ax.set_title(f"{title}\n{_data_of([p[1] for p in points])}", fontsize=10)
    ax.grid(True, alpha=0.3, which="both" if log else "major")
    file = _save(fig, out, name)
    caption = ("One point per configuration. Error bars: standard deviation over seeds where a row has several, "
               "else the record's 95% bootstrap interval (none where the record has neither).")
    return Figured(title, file, caption)


def _memory(row: Row) -> float | None:
    gpu = row.cost("peak_gpu_allocated_gib")
    return gpu if gpu is not None else row.cost("peak_rss_gib")


def _memory_names(rows: list[Row], names: list[str]) -> list[str]:
    return [n + (" (RSS)" if row.cost("peak_gpu_allocated_gib") is None and row.cost("peak_rss_gib") is not None
                 else "") for row, n in zip(rows, names)]


# ---------------------------------------------------------------- the figures


def _per_type(rows: list[Row], names: list[str], out: Path) -> Figured | None:
    types = sorted({t for row in rows for r in row.records for t in r.metrics.get("test", {}).get("per_type", {})},
                   key=lambda t: (ENTITY_TYPES.index(t) if t in ENTITY_TYPES else 99, t))
    shown = [(row, n) for row, n in zip(rows, names) if any(row.per_type(t) is not None for t in types)]
    if not types or not shown:
        return None
    values = [[row.per_type(t) for t in types] for row, _ in shown]
    grid = [[math.nan if v is None else 100 * v for v in line] for line in values]
    fig = _figure(1.2 * len(types) + 3.5, 0.45 * len(shown) + 1.8)
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, line in enumerate(grid):
        for j, v in enumerate(line):
            ax.text(j, i, "–" if math.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if not math.isnan(v) and v < 60 else "black")
    ax.set_xticks(range(len(types)), types)
    ax.set_yticks(range(len(shown)), [n for _, n in shown], fontsize=8)
    fig.colorbar(image, ax=ax, label="test F1 (%)")
    ax.set_title(f"Test F1 per entity type (mean over seeds)\n{_data_of([r for r, _ in shown])}", fontsize=10)
    return Figured("F1 per entity type", _save(fig, out, "f1_per_type.png"),
                   "Test F1 of each entity type, mean over a row's seeds; – where a row has no score for the type.")


def _curves(rows: list[Row], names: list[str], out: Path, key: str, y: str, heading: str, title: str, file: str,
            scale: float = 1.0) -> Figured | None:
    lines = []
    for row, n in zip(rows, names):
        record = next((r for r in row.records if r.metrics.get(key)), None)
        if record is None:
            continue
        points = [p for p in record.metrics[key] if p.get("epoch") is not None and p.get(y) is not None]
        if points:
            lines.append((n, record, [p["epoch"] for p in points], [scale * p[y] for p in points]))
    if not lines:
        return None
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    smoothed = []
    for i, (n, record, xs, ys) in enumerate(lines):
        label = n + (f", seed {record.seed}" if len(_row_of(rows, record).records) > 1 else "")
        colour = f"C{i % 10}"
        if key == "loss_curve" and len(ys) > SMOOTH_ABOVE:
            window = max(2, len(ys) // 50)
            ax.plot(xs, ys, color=colour, alpha=0.15, linewidth=0.6)
            ys = _running_mean(ys, window)
            smoothed.append(f"{n} ({window} points)")
        ax.plot(xs, ys, color=colour, label=label, linewidth=1.4,
                marker="o" if len(xs) <= 30 else None, markersize=3)
    if key == "loss_curve" and all(v > 0 for *_, ys in lines for v in ys):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel({"loss": "training loss" + (" (log scale)" if ax.get_yscale() == "log" else ""),
                   "dev_f1": "dev F1 (%)"}.get(y, y))
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{title}\n{_data_of([_row_of(rows, r) for _, r, *_ in lines])}", fontsize=10)
    caption = "One line per row (its first seed with a curve)."
    if smoothed:
        caption += (" Long curves are drawn as a running mean (the raw values faint behind it): "
                    + ", ".join(smoothed) + ".")
    return Figured(heading, _save(fig, out, file), caption)


def _row_of(rows: list[Row], record: RunRecord) -> Row:
    return next(row for row in rows if any(r is record for r in row.records))


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _predictions_of(row: Row, data_dirs: Iterable[str | Path]) -> tuple[RunRecord, ErrorAnalysis] | None:
    """The first record of the row whose saved test predictions can be read, with their error analysis."""
    for record in row.records:
        try:
            found = saved_predictions(record, "test", data_dirs)
        except (OSError, ValueError, EOFError):  # an unreadable file: the next seed's, or the figure goes without
            continue
        if found is not None:
            return record, classify_predictions(found)
    return None


def _errors(rows: list[Row], names: list[str], out: Path, data_dirs: Iterable[str | Path]) -> Figured | None:
    found = [(n, *hit) for row, n in zip(rows, names) if (hit := _predictions_of(row, data_dirs)) is not None]
    if not found:
        return None
    drawn, left = found[:MAX_ERROR_ROWS], found[MAX_ERROR_ROWS:]
    n_types = max(len(a.types) for _, _, a in drawn) + 1
    fig = _figure(11, max(3.6, 0.45 * n_types + 1.6) * len(drawn))
    axes = fig.subplots(len(drawn), 2, squeeze=False, gridspec_kw={"width_ratios": [1.1, 1]})
    for (n, record, analysis), (ax_m, ax_b) in zip(drawn, axes):
        rows_l, cols_l, counts = analysis.matrix()
        shares = [[c / sum(line) if sum(line) else 0.0 for c in line] for line in counts]
        ax_m.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i, line in enumerate(counts):
            for j, c in enumerate(line):
                ax_m.text(j, i, str(c), ha="center", va="center", fontsize=8,
                          color="white" if shares[i][j] > 0.6 else "black")
        ax_m.set_xticks(range(len(cols_l)), cols_l, fontsize=8)
        ax_m.set_yticks(range(len(rows_l)), rows_l, fontsize=8)
        ax_m.set_xlabel("predicted type", fontsize=8)
        ax_m.set_ylabel("gold type", fontsize=8)
        ax_m.set_title(f"{n}, seed {record.seed}: type confusion\n(overlapping spans; shade: share of the row)",
                       fontsize=9)
        labels = [CLASS_NAMES[k] for k in CLASSES]
        values = [analysis.counts[k] for k in CLASSES]
        colours = ["tab:green", "tab:purple", "tab:blue", "tab:olive", "tab:red", "tab:orange"]
        bars = ax_b.barh(range(len(labels)), values, color=colours)
        ax_b.set_yticks(range(len(labels)), labels, fontsize=8)
        ax_b.invert_yaxis()
        ax_b.bar_label(bars, fontsize=8, padding=2)
        ax_b.set_xlabel("entities", fontsize=8)
        ax_b.margins(x=0.15)
        ax_b.set_title(f"{n}: error classes\n({analysis.n_gold} gold, {analysis.n_pred} predicted entities)",
                       fontsize=9)
    fig.suptitle(f"Entity errors on saved test predictions — {_data_of([_row_of(rows, r) for _, r, _ in drawn])}",
                 fontsize=10)
    fig.tight_layout()
    caption = ("Left: gold type x predicted type over paired entities (same or overlapping span), with a `none` column "
               "for missed gold entities and a `none` row for spurious predictions. Right: each gold and predicted "
               "entity counted once in one class (rules: `nerbench_core/reporting/errors.py`).")
    if left:
        caption += f" Not drawn (at most {MAX_ERROR_ROWS} rows): {', '.join(n for n, *_ in left)}."
    table = ["| row | seed | " + " | ".join(CLASS_NAMES[k] for k in CLASSES) + " |",
             "|---|---|" + "---|" * len(CLASSES)]
    table += [f"| {n} | {record.seed} | " + " | ".join(str(a.counts[k]) for k in CLASSES) + " |"
              for n, record, a in found]
    return Figured("Entity errors (test predictions)", _save(fig, out, "errors_test.png"), caption,
                   extra="\n".join(table))


# ---------------------------------------------------------------- the page


def plot_all(rows: list[Row], out: Path, data_dirs: Iterable[str | Path] = ()) -> Path:
    """Write the figures of ``rows`` as PNGs into the folder ``out``, and ``out/index.md`` linking them (with the
    results table); returns the path of ``index.md``. A figure without data is skipped, with a note saying why.
    ``data_dirs``: where the data of predicted tags saved alone (a baselines file's) may be."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = _names(rows)
    entries: list[Figured] = []

    def add(title: str, figured: Figured | None, why: str) -> None:
        entries.append(figured if figured is not None else Figured(title, skipped=why))

    scored = [row for row in rows if row.mean is not None]
    no_f1 = "no row has a test F1" if not scored else ""
    add("F1 against training time",
        _scatter(rows, names, lambda r: r.cost("train_seconds"), "training time (s)",
                 "Test F1 against training time", out, "f1_vs_train_time.png"),
        no_f1 or "no row with an F1 has a training time (cost.train_seconds)")
    add("F1 against peak memory",
        _scatter(rows, _memory_names(rows, names), _memory,
                 "peak memory (GiB; GPU allocated, or process RSS where marked)",
                 "Test F1 against peak memory", out, "f1_vs_peak_memory.png", log=False),
        no_f1 or "no row with an F1 has a peak memory (cost.peak_gpu_allocated_gib or cost.peak_rss_gib)")
    add("F1 against parameters",
        _scatter(rows, names, lambda r: r.first.model.get("params_total"), "parameters (total)",
                 "Test F1 against model parameters", out, "f1_vs_params.png", log=True,
                 ticks=lambda x: count(round(x))),
        no_f1 or "no row with an F1 has a parameter count (model.params_total)")
    add("F1 per entity type", _per_type(rows, names, out), "no record has per-type test scores (metrics.test.per_type)")
    add("Entity errors (test predictions)", _errors(rows, names, out, data_dirs),
        "no row has a readable saved test predictions file (record.predictions['test']; a baselines file's "
        "predicted tags need their data folder)")
    add("Training loss", _curves(rows, names, out, "loss_curve", "loss", "Training loss",
                                 "Training loss against epoch", "loss_curves.png"),
        "no record has a loss curve (metrics.loss_curve)")
    add("Dev F1", _curves(rows, names, out, "dev_history", "dev_f1", "Dev F1",
                          "Dev F1 against epoch (model selection)", "dev_f1_curves.png", scale=100.0),
        "no record has a dev-F1 history (metrics.dev_history)")

    lines = ["# nerbench results: figures", ""]
    if rows:
        lines += [f"Data: {_data_of(rows)}. {len(rows)} configuration(s), "
                  f"{sum(len(row.records) for row in rows)} record(s).", "", render_as(rows, "markdown", "default"), ""]
    else:
        lines += ["No results to plot.", ""]
    for e in entries:
        lines += [f"## {e.title}", ""]
        if e.file:
            lines += [f"![{e.title}]({e.file})", "", e.caption, ""]
            if e.extra:
                lines += [e.extra, ""]
        else:
            lines += [f"_Skipped: {e.skipped}._", ""]
    index = out / "index.md"
    atomic.write_text(index, "\n".join(lines).rstrip("\n") + "\n")
    return index
