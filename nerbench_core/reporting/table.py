"""The comparison tables, drawn by tabulate from records alone (no torch).

A table is a list of columns, and a column is data: its header, how to read its value from a row, and the column
sets it belongs to (``default``: compact, fits 120 characters; ``all``: every score; ``cost``: speed and memory;
``time``: where a suite's time went). A row folds the records of one configuration over its seeds: F1 shows as
mean ± standard deviation (n) over seeds, or with its bootstrap interval where there is one seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

from tabulate import tabulate

from ..stats import mean_std
from .records import RunRecord

ENTITY_TYPES = ("PER", "LOC", "ORG", "MISC")


@dataclass
class Row:
    """The records of one configuration (case, data, mode, set-up) over its seeds."""

    records: list[RunRecord]
    baseline: float | None = None  # the stored baseline's mean F1, when comparing
    versus_best: str = ""  # ΔF1 to the best row, marked where significant (filled in by the caller)
    speedup: str = ""  # steady tokens/s against the baseline set-up's (cost_rows)
    floor: float | None = None  # the floor judged against (the current spec's where known, else the record's)
    floor_note: str = ""
    regression: str = ""  # why the row fell below its stored baseline's bound, when comparing

    @property
    def first(self) -> RunRecord:
        return self.records[0]

    @property
    def f1s(self) -> list[float]:
        return [r.f1 for r in self.records if r.f1 is not None and not math.isnan(r.f1)]

    @property
    def mean(self) -> float | None:
        return sum(self.f1s) / len(self.f1s) if self.f1s else None

    @property
    def std(self) -> float | None:
        return mean_std(self.f1s)[1] if self.f1s else None

    def metric(self, key: str, split: str = "test") -> float | None:
        values = [r.metrics.get(split, {}).get(key) for r in self.records]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    def per_type(self, t: str) -> float | None:
        values = [r.metrics.get("test", {}).get("per_type", {}).get(t, {}).get("f1") for r in self.records]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    def cost(self, key: str) -> float | None:
        values = [r.cost.get(key) for r in self.records if r.cost.get(key) is not None]
        return sum(values) / len(values) if values else None

    @property
    def status(self) -> str:
        return status_of(self)


def fold(records: Iterable[RunRecord], per_seed: bool = False) -> list[Row]:
    """One row per configuration: the records that differ only in their seed share a row (``per_seed``: a row each)."""
    groups: dict[tuple, list[RunRecord]] = {}
    finished = {(r.case, r.mode) for r in records if r.finished}
    for r in records:
        if r.run_key.startswith("crashed-") and (r.case, r.mode) in finished:
            continue  # a process that died in a case that has since been run to the end
        key = (r.case, r.mode, r.dataset.get("fingerprint"), r.label, r.synthetic,
               r.run_key if per_seed else r.config_key or r.run_key)
        groups.setdefault(key, []).append(r)
    rows = [Row(sorted(rs, key=lambda r: r.seed), floor=rs[0].floor, floor_note=rs[0].floor_note)
            for rs in groups.values()]
    return sorted(rows, key=lambda row: (row.first.mode, row.first.model.get("params_total") or 0, row.first.case))


# ---------------------------------------------------------------- formatting


def pct(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def count(n) -> str:
    if n is None:
        return ""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def memory(row: Row) -> str:
    gib = row.cost("peak_gpu_allocated_gib")
    if gib is not None:
        return f"{gib:.1f} GiB gpu"
    rss = row.cost("peak_rss_gib")
    return f"{rss:.1f} GiB rss" if rss is not None else ""


def f1_text(row: Row) -> str:
    """F1 as mean ± std (n) over seeds; one seed with its 95% bootstrap interval where it has one."""
    if row.mean is None:
        return "undefined" if any(r.finished for r in row.records) else ""
    if len(row.f1s) > 1:
        return f"{100 * row.mean:.2f} ± {100 * row.std:.2f} (n={len(row.f1s)})"
    ci = row.first.metrics.get("test", {}).get("ci") or {}
    if ci.get("low") is not None:
        return f"{100 * row.mean:.2f} [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]"
    return f"{100 * row.mean:.2f}"


def status_of(row: Row) -> str:
    """passed / failed with the reason / skipped / no floor, judged now against ``row.floor``."""
    reused = " (reused)" if all(r.reused for r in row.records) else ""
    errors = [r for r in row.records if r.error]
    if any(r.status == "skipped" for r in row.records):
        return "skipped: " + (errors[0].error if errors else "")[:60]
    if errors:
        return "failed: " + errors[0].error[:60]
    if row.first.synthetic:
        return "synthetic" + reused
    if row.regression:
        return f"failed: {row.regression}" + reused
    if row.floor is None:  # passes: there is nothing to hold it to (the record's floor_note says why)
        short = "no floor" if row.floor_note.startswith("no floor set") else "no floor for this data"
        return short + reused
    below = [f for f in row.f1s if f < row.floor]
    undefined = len(row.records) - len(row.f1s)
    if below or undefined:
        worst = f"{100 * min(below):.2f}" if below else "undefined F1"
        n = f" ({len(below) + undefined}/{len(row.records)} seeds)" if len(row.records) > 1 else ""
        return f"failed: {worst} < floor {100 * row.floor:.2f}{n}" + reused
    return "passed" + reused


def setup(row: Row) -> str:
    """How a case was batched and run, from its record: what the speed columns depend on."""
    r = row.first
    t = r.spec.get("train", {})
    batching = (f"{t['max_tokens_per_batch']}-token batches" if t.get("max_tokens_per_batch")
                else f"{t.get('batch_size')} sentences, {'length-grouped' if t.get('group_by_length') else 'random'}")
    levers = r.model.get("accel", {})
    words = [word for lever, word in LEVER_WORDS.items() if levers.get(lever, {}).get("on")]
    return ", ".join([batching, *words])


# The speed levers' set-up words, in the order the column lists them (accel.plan.AccelPlan's fields)
LEVER_WORDS = {"gradient_checkpointing": "grad ckpt", "liger": "liger", "torch_compile": "compiled",
               "fused_lora": "fused LoRA", "fused_lora_backward": "LoRA grad kernel", "fused_rope": "RoPE kernel",
               "keep_dequantized": "dequantized once", "fp8_matmuls": "FP8 matmuls", "cuda_graphs": "graphs",
               "packed_sequences": "packed", "graphed_generation": "graphed decoding",
               "bnb_without_syncs": "bnb step unsynced"}


# ---------------------------------------------------------------- the columns


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Row], str]
    sets: tuple[str, ...] = ("all",)
    when: Callable[[list[Row]], bool] = field(default=lambda rows: True)  # shown only where it has something to say


def _method(row: Row) -> str:
    m = row.first.model
    method = m.get("method", row.first.spec.get("method", ""))
    paradigm = m.get("paradigm") or row.first.spec.get("paradigm", "head")
    return method + (f" r{m['lora_r']}" if m.get("lora_r") else "") + (" gen" if paradigm == "generative" else "")


def _data(row: Row) -> str:
    r = row.first
    name = r.dataset.get("name") or (r.dataset.get("full_fingerprint") or r.dataset.get("fingerprint") or "")[:8]
    name = name or ("quick" if r.mode == "quick" else "full")
    text = f"{name}, quick" if r.mode == "quick" and name != "quick" else name
    return f"{text}, synthetic" if r.synthetic else text


def _fixed(key: str, digits: int = 0, scale: float = 1.0, suffix: str = "") -> Callable[[Row], str]:
    def value(row: Row) -> str:
        v = row.cost(key)
        return "" if v is None else f"{scale * v:,.{digits}f}{suffix}"
    return value


def _delta(row: Row) -> str:
    return "" if row.baseline is None or row.mean is None else f"{100 * (row.mean - row.baseline):+.2f}"


def _parse_count(*keys: str) -> Callable[[Row], str]:
    """Generative: what the parser could not keep of the test answers (malformed pieces, spans not in the sentence,
    unknown types, overlaps), or the answers that changed the sentence's words (their entities elsewhere are kept)."""
    def value(row: Row) -> str:
        counts = row.first.metrics.get("test", {}).get("parse")
        return "" if not counts else str(sum(counts.get(k, 0) for k in keys))
    return value


def _generative(rows: list[Row]) -> bool:
    return any(r.first.metrics.get("test", {}).get("parse") for r in rows)


COLUMNS: list[Column] = [
    Column("model", lambda r: r.first.case, ("default", "all", "cost", "time")),
    Column("seed", lambda r: str(r.first.seed) if len(r.records) == 1 else "", ("default", "all"),
           when=lambda rows: len({(r.first.case, r.first.label) for r in rows}) < len(rows)),
    Column("label", lambda r: r.first.label, ("cost", "time")),
    Column("data", _data, ("default", "all"), when=lambda rows: len({_data(r) for r in rows}) > 1),
    Column("method", _method, ("default", "all")),
    Column("backend", lambda r: r.first.model.get("backend", ""), ("all", "cost")),
    Column("set-up", setup, ("cost",)),
    Column("params (total/train)", lambda r: f"{count(r.first.model.get('params_total'))}/"
                                             f"{count(r.first.model.get('params_trainable'))}", ("all",)),
    Column("P", lambda r: pct(r.metric("precision"))),
    Column("R", lambda r: pct(r.metric("recall"))),
    Column("F1", f1_text, ("default", "all")),
    Column("ΔF1 vs base", _delta, ("default", "all"), when=lambda rows: any(r.baseline is not None for r in rows)),
    Column("vs best", lambda r: r.versus_best, ("default", "all"), when=lambda rows: any(r.versus_best for r in rows)),
    Column("strict F1", lambda r: pct(r.metric("strict_f1"))),
    Column("dropped", _parse_count("malformed", "hallucinated", "unknown_type", "overlapping"), ("default", "all"),
           when=_generative),
    Column("word edits", _parse_count("word_edits"), ("all",), when=_generative),
    Column("train s", _fixed("train_seconds"), ("default", "all")),
    Column("tok/s", _fixed("train_tokens_per_second")),
    Column("pad %", _fixed("padding_fraction", scale=100)),
    Column("MFU %", _fixed("mfu", digits=1, scale=100)),
    Column("peak mem", memory, ("default", "all")),
    Column("status", lambda r: r.status, ("default", "all")),
]
TYPE_COLUMNS_AFTER = "strict F1"  # the per-type F1 columns of the "all" set follow this one


def type_columns(rows: list[Row]) -> list[Column]:
    types = sorted({t for row in rows for r in row.records for t in r.metrics.get("test", {}).get("per_type", {})},
                   key=lambda t: (ENTITY_TYPES.index(t) if t in ENTITY_TYPES else 99, t))
    return [Column(f"F1 {t}", lambda r, t=t: pct(r.per_type(t))) for t in types]


def columns_for(choice: str, rows: list[Row]) -> list[Column]:
    """A column set (default, all, cost, time) or a comma-separated list of headers (``--columns``)."""
    every = list(COLUMNS)
    at = [c.header for c in every].index(TYPE_COLUMNS_AFTER) + 1
    every[at:at] = [Column(c.header, c.value, ("all",)) for c in type_columns(rows)]
    if choice in ("cost", "time"):  # the speed or time table's columns, a row per configuration
        return [c for c in COLUMNS if choice in c.sets] + (COST_COLUMNS if choice == "cost" else TIME_COLUMNS)
    if choice in ("default", "all"):
        return [c for c in every if choice in c.sets and c.when(rows)]
    by_header: dict[str, Column] = {}
    for c in every + COST_COLUMNS + TIME_COLUMNS:  # the main table's column where two share a header (status)
        by_header.setdefault(c.header.lower(), c)
    wanted = [h.strip() for h in choice.split(",")]
    unknown = [h or "(an empty name)" for h in wanted if h.lower() not in by_header]
    if unknown:
        raise ValueError(f"--columns: unknown column(s) {', '.join(unknown)}; known: default, all, cost, time, or "
                         f"{', '.join(dict.fromkeys(c.header for c in every + COST_COLUMNS + TIME_COLUMNS))}")
    return [by_header[h.lower()] for h in wanted]


def cells(rows: list[Row], columns: list[Column]) -> tuple[list[str], list[list[str]]]:
    return [c.header for c in columns], [[c.value(row) for c in columns] for row in rows]


def render(rows: list[Row], columns: str | list[Column] = "default", fmt: str = "github") -> str:
    """The table; where every row ran on the same data (the data column left out), a line above says which."""
    if not rows:
        return "nerbench: no results"
    cols = columns_for(columns, rows) if isinstance(columns, str) else columns
    headers, body = cells(rows, cols)
    table = tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)
    data = {_data(r) for r in rows}
    return f"data: {data.pop()}\n{table}" if "data" not in headers and len(data) == 1 else table


# ---------------------------------------------------------------- speed and time tables


def _steady_mfu(row: Row) -> str:
    c = row.first.cost
    steady, peak, fpt = c.get("train_tokens_per_second_steady"), c.get("gpu_peak_flops"), c.get("flops_per_token")
    return f"{100 * fpt * steady / peak:.1f}%" if steady and peak and fpt else ""


def _peak(row: Row) -> str:
    """Allocated / reserved peaks; where the case began with memory an earlier case of its process still held (which
    its peak includes), how much."""
    c = row.first.cost
    if "peak_gpu_allocated_gib" in c:
        held = c.get("gpu_allocated_at_start_gib") or 0.0
        text = f"{c['peak_gpu_allocated_gib']:.1f} / {c['peak_gpu_reserved_gib']:.1f}"
        return text + (f" ({held:.1f} held at start)" if held >= 0.05 else "")
    return memory(row)


COST_COLUMNS: list[Column] = [
    Column("steps", _fixed("train_steps"), ("cost",)),
    Column("real tok/s", _fixed("train_tokens_per_second"), ("cost",)),
    Column("steady tok/s", _fixed("train_tokens_per_second_steady"), ("cost",)),
    Column("vs baseline", lambda r: r.speedup, ("cost",)),
    Column("padding", _fixed("padding_fraction", scale=100, suffix="%"), ("cost",)),
    Column("peak GiB (alloc / reserved)", _peak, ("cost",)),
    Column("MFU", lambda r: _fixed("mfu", 1, 100, "%")(r) if r.cost("mfu") else "", ("cost",)),
    Column("steady MFU", _steady_mfu, ("cost",)),
    Column("status", lambda r: r.first.status + (f": {r.first.error[:80]}" if r.first.error else ""), ("cost",)),
]


def cost_rows(records: list[RunRecord], baseline: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Speed and memory per record; ``baseline`` names the label whose record of the same case is the 1.00x (steady
    rate against steady rate where both have one, else overall against overall)."""
    rows = [Row([r]) for r in records]
    bases = {r.case: r.cost for r in records if baseline and r.label == baseline}
    for row in rows:
        base, mine = bases.get(row.first.case, {}), row.first.cost
        steady = "train_tokens_per_second_steady"
        key = steady if mine.get(steady) and base.get(steady) else "train_tokens_per_second"
        if mine.get(key) and base.get(key):
            row.speedup = f"{mine[key] / base[key]:.2f}x"
    return cells(rows, [c for c in COLUMNS if "cost" in c.sets] + COST_COLUMNS)


def render_cost(records: list[RunRecord], baseline: str | None = None, fmt: str = "github") -> str:
    headers, body = cost_rows(records, baseline)
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)


# the parts of a case's time, each timed apart (records before they were all timed lack some, and show no rest);
# SAVE_PART only where the case was saved (--save-models)
CASE_PARTS = ("load_seconds", "prepare_seconds", "trainer_setup_seconds", "train_seconds", "dev_eval_seconds",
              "checkpoint_seconds", "test_eval_seconds", "scoring_seconds")
SAVE_PART = "save_seconds"


def _rest(row: Row) -> str:
    """What no part's clock timed (Python between the parts), where every record of the row timed every part. Not for
    a resumed run: its dev scorings include the interrupted run's, which its case time does not."""
    timed_all = all(r.cost.get(k) is not None for r in row.records for k in (*CASE_PARTS, "case_seconds"))
    if not timed_all or any(r.cost.get("resumed_from") for r in row.records):
        return ""
    rests = [r.cost["case_seconds"] - sum(r.cost[k] for k in CASE_PARTS) - r.cost.get(SAVE_PART, 0.0)
             for r in row.records]
    return f"{sum(rests) / len(rests):,.1f}"


TIME_COLUMNS: list[Column] = [
    Column("build s", _fixed("load_seconds", 1), ("time",)),
    # the speed levers installed and the splits encoded; then the Trainer built and its batches planned
    Column("prepare s", _fixed("prepare_seconds", 1), ("time",)),
    Column("trainer s", _fixed("trainer_setup_seconds", 1), ("time",)),
    Column("train s", _fixed("train_seconds", 1), ("time",)),
    # of training's time: each CUDA graph shape's first step, trained eagerly (in a fresh process with Triton's
    # compilations), and its capture
    Column("first steps s", _fixed("graph_first_steps_seconds", 1), ("time",)),
    Column("dev eval s", _fixed("dev_eval_seconds", 1), ("time",)),
    Column("checkpoints s", _fixed("checkpoint_seconds", 1), ("time",)),
    Column("test eval s", _fixed("test_eval_seconds", 1), ("time",)),
    # seqeval's metrics of test (with its bootstrap interval) and of the kept epoch's dev predictions
    Column("scoring s", _fixed("scoring_seconds", 1), ("time",)),
    Column("rest s", _rest, ("time",)),
    Column("case s", _fixed("case_seconds", 1), ("time",)),
]


def time_rows(records: list[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """Where a suite's time went, per case: model build, training (of it, the graph shapes' first steps), dev
    scoring, checkpoints, test scoring, and the case's share of the summed case times (the time the suite takes one
    case after another on one device)."""
    rows = sorted((Row([r]) for r in records), key=lambda row: -(row.cost("case_seconds") or 0))
    total = sum(row.cost("case_seconds") or 0 for row in rows)
    share = Column("share", lambda r: f"{100 * r.cost('case_seconds') / total:.0f}%" if total and r.cost("case_seconds")
                   else "", ("time",))
    headers, body = cells(rows, [c for c in COLUMNS if "time" in c.sets] + TIME_COLUMNS + [share])
    summary = {headers[0]: "all", "case s": f"{total:.1f} ({total / 60:.1f} min)", "share": "100%" if total else ""}
    body.append([summary.get(h, "") for h in headers])
    return headers, body


def render_time(records: list[RunRecord], fmt: str = "github") -> str:
    headers, body = time_rows(records)
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)
