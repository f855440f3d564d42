"""The comparison table, drawn by tabulate from records alone (no torch)."""
from __future__ import annotations

from tabulate import tabulate

from .records import RunRecord

ENTITY_TYPES = ("PER", "LOC", "ORG", "MISC")


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _count(n) -> str:
    if n is None:
        return ""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _mem(cost: dict) -> str:
    gib = cost.get("peak_gpu_allocated_gib")
    if gib is not None:
        return f"{gib:.1f} GiB gpu"
    rss = cost.get("peak_rss_gib")
    return f"{rss:.1f} GiB rss" if rss is not None else ""


def rows(records: list[RunRecord], baselines: dict[str, float] | None = None) -> tuple[list[str], list[list]]:
    types = sorted({t for r in records for t in r.metrics.get("test", {}).get("per_type", {})},
                   key=lambda t: (ENTITY_TYPES.index(t) if t in ENTITY_TYPES else 99, t))
    headers = ["model", "data", "method", "backend", "params (total/train)", "P", "R", "F1", "strict F1",
               *[f"F1 {t}" for t in types], "train s", "tok/s", "pad %", "MFU %", "peak mem", "status"]
    if baselines is not None:
        headers.insert(headers.index("strict F1"), "ΔF1 vs base")
    out = []
    for r in sorted(records, key=lambda r: (r.mode, r.model.get("params_total") or 0, r.case)):
        test = r.metrics.get("test", {})
        per = test.get("per_type", {})
        c = r.cost
        status = r.status + (" (reused)" if r.cost.get("reused") else "")
        if r.error:
            status += f": {r.error[:60]}"
        row = [
            r.case,
            r.mode if not r.synthetic else f"{r.mode}, synthetic",
            r.model.get("method", r.spec.get("method", "")) + (f" r{r.model['lora_r']}" if r.model.get("lora_r") else ""),
            r.model.get("backend", ""),
            f"{_count(r.model.get('params_total'))}/{_count(r.model.get('params_trainable'))}",
            _pct(test.get("precision")), _pct(test.get("recall")), _pct(test.get("f1")), _pct(test.get("strict_f1")),
            *[_pct(per.get(t, {}).get("f1")) for t in types],
            f"{c['train_seconds']:.0f}" if c.get("train_seconds") is not None else "",
            f"{c['train_tokens_per_second']:.0f}" if c.get("train_tokens_per_second") else "",
            f"{100 * c['padding_fraction']:.0f}" if c.get("padding_fraction") is not None else "",
            f"{100 * c['mfu']:.1f}" if c.get("mfu") is not None else "",
            _mem(c),
            status,
        ]
        if baselines is not None:
            base = baselines.get(r.case)
            delta = "" if base is None or test.get("f1") is None else f"{100 * (test['f1'] - base):+.2f}"
            row.insert(headers.index("ΔF1 vs base"), delta)
        out.append(row)
    return headers, out


def render(records: list[RunRecord], baselines: dict[str, float] | None = None, fmt: str = "github") -> str:
    if not records:
        return "nerbench: no results"
    headers, body = rows(records, baselines)
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)


def setup(record: RunRecord) -> str:
    """How a case was batched and run, from its spec: what the speed columns depend on."""
    t = record.spec.get("train", {})
    batching = (f"{t['max_tokens_per_batch']}-token batches" if t.get("max_tokens_per_batch")
                else f"{t.get('batch_size')} sentences, {'length-grouped' if t.get('group_by_length') else 'random'}")
    # as decided for the run (a spec may say "auto"); records from before that decision have only the spec's
    checkpointing = record.model.get("gradient_checkpointing", t.get("gradient_checkpointing"))
    kernels = (record.model.get("fused_kernels") or []) + [record.model.get("cuda_graphs") or ""]
    extras = ["grad ckpt"] if checkpointing is True else []
    extras += [label for prefix, label in KERNEL_LABELS.items() if any(k.startswith(prefix) for k in kernels)]
    return ", ".join([batching, *extras])


# How training.train names what it switched on (TrainOutcome.fused_kernels and .cuda_graphs), and the set-up column's
# word for it.
KERNEL_LABELS = {"liger": "liger", "torch.compile": "compiled", "fused LoRA": "fused LoRA",
                 "dequantized once": "dequantized once", "CUDA graphs:": "graphs"}


def cost_rows(records: list[RunRecord], baseline: str | None = None) -> tuple[list[str], list[list]]:
    """Speed and memory per record; ``baseline`` names the label whose record of the same case is the 1.00x."""
    headers = ["case", "label", "set-up", "backend", "steps", "real tok/s", "steady tok/s", "vs baseline",
               "padding", "peak GiB (alloc / reserved)", "MFU", "steady MFU", "status"]
    def rates(r: RunRecord) -> tuple:
        return r.cost.get("train_tokens_per_second"), r.cost.get("train_tokens_per_second_steady")

    bases = {r.case: rates(r) for r in records if baseline and r.label == baseline}
    out = []
    for r in records:
        c = r.cost
        rate, steady = rates(r)
        base_rate, base_steady = bases.get(r.case, (None, None))
        # steady against steady (warm-up excluded on both sides) where both have it, else overall against overall
        mine, base_rate = (steady, base_steady) if steady and base_steady else (rate, base_rate)
        peak = c.get("gpu_peak_flops")
        out.append([
            r.case, r.label, setup(r), r.model.get("backend", ""), c.get("train_steps", ""),
            f"{rate:,.0f}" if rate else "", f"{steady:,.0f}" if steady else "",
            f"{mine / base_rate:.2f}x" if mine and base_rate else "",
            f"{100 * c['padding_fraction']:.0f}%" if c.get("padding_fraction") is not None else "",
            f"{c['peak_gpu_allocated_gib']:.1f} / {c['peak_gpu_reserved_gib']:.1f}" if "peak_gpu_allocated_gib" in c
            else _mem(c),
            f"{100 * c['mfu']:.1f}%" if c.get("mfu") else "",
            f"{100 * c['flops_per_token'] * steady / peak:.1f}%" if steady and peak and c.get("flops_per_token") else "",
            r.status + (f": {r.error[:80]}" if r.error else ""),
        ])
    return headers, out


def render_cost(records: list[RunRecord], baseline: str | None = None, fmt: str = "github") -> str:
    headers, body = cost_rows(records, baseline)
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)


def time_rows(records: list[RunRecord]) -> tuple[list[str], list[list]]:
    """Where a suite's time went, per case: model build, training, dev and test scoring, and the case's share
    of the summed case times (the time the suite takes one case after another on one device)."""
    headers = ["case", "label", "build s", "train s", "dev eval s", "test eval s", "case s", "share"]
    cases = [(r, r.cost.get("case_seconds")) for r in records]
    total = sum(s for _, s in cases if s)
    out = []
    for r, seconds in sorted(cases, key=lambda rs: -(rs[1] or 0)):
        c = r.cost
        out.append([r.case, r.label, *(f"{c[k]:.1f}" if c.get(k) is not None else "" for k in
                                       ("load_seconds", "train_seconds", "dev_eval_seconds", "test_eval_seconds")),
                    f"{seconds:.1f}" if seconds else "", f"{100 * seconds / total:.0f}%" if seconds and total else ""])
    out.append(["all", "", "", "", "", "", f"{total:.1f} ({total / 60:.1f} min)", "100%" if total else ""])
    return headers, out


def render_time(records: list[RunRecord], fmt: str = "github") -> str:
    headers, body = time_rows(records)
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)
