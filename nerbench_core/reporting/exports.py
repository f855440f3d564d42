"""The table in other formats, and a whole run as one JSON file. No torch.

``csv`` and ``json`` carry the cells of the chosen columns (``json`` as a list of objects, header -> cell);
``markdown``, ``html`` and ``latex`` are tabulate's formats of the same table.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .. import atomic
from .table import Row, cells, columns_for, render

TABULATE = {"markdown": "github", "html": "html", "latex": "latex", "text": "simple"}
FORMATS = ("csv", "json", *TABULATE)


def render_as(rows: list[Row], fmt: str, columns: str = "default") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    headers, body = cells(rows, columns_for(columns, rows))
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(body)
        return out.getvalue().rstrip("\n")
    if fmt == "json":
        return json.dumps([dict(zip(headers, row)) for row in body], indent=1, ensure_ascii=False)
    return render(rows, columns, TABULATE[fmt])


def export_run(path: str | Path, rows: list[Row]) -> Path:
    """Every record of the run and its table (all columns) in one JSON file."""
    headers, body = cells(rows, columns_for("all", rows))
    data = {"records": [r.to_dict() for row in rows for r in row.records],
            "table": {"columns": headers, "rows": [dict(zip(headers, row)) for row in body]}}
    return atomic.write_json(Path(path), data)
