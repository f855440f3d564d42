"""Result records: one per case and seed, JSON, versioned. No torch here: records are read and tabulated anywhere.

A record says what ran (the spec and its hash, the data's fingerprint, mode and seed), what came out (test metrics
with their bootstrap interval, the dev selection), what it cost, how the model was built and which speed levers were
on, and where it ran. :func:`RunRecord.from_dict` checks a record against the schema when it is read back.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import MISSING, asdict, dataclass, field, fields

SCHEMA = 2  # 2: config_key, predictions, floor_note; schema 1 records are read (the new fields take defaults)
STATUSES = ("passed", "failed", "skipped")


class RecordError(ValueError):
    """A JSON file that is not a record nerbench can read (the message says what is wrong)."""


@dataclass
class RunRecord:
    case: str
    status: str  # passed (floor met, or no floor for this data), failed (below floor, or an error), skipped
    run_key: str  # identity of the run: same key, same work
    mode: str  # "full" or "quick"
    spec: dict
    spec_hash: str
    dataset: dict  # name, source, fingerprint, sample, sizes
    seed: int
    metrics: dict = field(default_factory=dict)  # test metrics (scored once, with an interval) and the dev selection
    cost: dict = field(default_factory=dict)  # times, tokens/s, memory, MFU
    model: dict = field(default_factory=dict)  # backend, method, quantization, attention, params, speed levers
    floor: float | None = None  # the F1 floor this run was held to (None: no floor for this data)
    floor_note: str = ""  # why there was no floor, where there was none
    error: str | None = None
    synthetic: bool = False
    label: str = ""  # --label: names the set-up of this run (e.g. a perf variant), for tables that compare runs
    config_key: str = ""  # the run key without the seed: the records of one configuration over several seeds
    predictions: dict = field(default_factory=dict)  # split -> predictions file, beside the record
    environment: dict = field(default_factory=dict)  # versions, git commit, machine
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    schema: int = SCHEMA
    # where this record was read from, and whether this run reused it instead of training: not saved
    folder: str = field(default="", compare=False)
    reused: bool = field(default=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in _NOT_SAVED:
            d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        """A record from its JSON form, checked: RecordError names what is missing or of the wrong type."""
        if not isinstance(d, dict):
            raise RecordError(f"not a record: a JSON {type(d).__name__}")
        schema = d.get("schema", 1)
        if not isinstance(schema, int) or schema > SCHEMA:
            raise RecordError(f"record schema {schema!r}: this nerbench reads schemas 1 to {SCHEMA}")
        hints = {f.name: f for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise RecordError(f"not a record: missing {', '.join(missing)}")
        for name, kind in _TYPES.items():
            if name in d and d[name] is not None and not isinstance(d[name], kind):
                raise RecordError(f"record field {name!r}: expected {kind.__name__ if isinstance(kind, type) else kind}, "
                                  f"got {type(d[name]).__name__}")
        if d["status"] not in STATUSES:
            raise RecordError(f"record status {d['status']!r}: expected one of {', '.join(STATUSES)}")
        test = d.get("metrics", {}).get("test", {})
        if not isinstance(test, dict) or not all(isinstance(test.get(k), (int, float, type(None)))
                                                 for k in ("f1", "precision", "recall")):
            raise RecordError("record field 'metrics.test': expected a table of numbers (f1, precision, recall)")
        bad = [k for k, v in d.get("cost", {}).items()
               if k.endswith(("_seconds", "_per_second", "_gib")) and not isinstance(v, (int, float, type(None)))]
        if bad:
            raise RecordError(f"record field 'cost': {', '.join(bad)} not numbers")
        return cls(**{k: v for k, v in d.items() if k in hints and k not in _NOT_SAVED})

    @property
    def f1(self) -> float | None:
        return self.metrics.get("test", {}).get("f1")

    @property
    def finished(self) -> bool:
        """Trained and scored (passed or below its floor), as opposed to an error or a skip."""
        return self.status in ("passed", "failed") and self.error is None


_NOT_SAVED = ("folder", "reused")
_TYPES = {"case": str, "status": str, "run_key": str, "mode": str, "spec": dict, "spec_hash": str, "dataset": dict,
          "seed": int, "metrics": dict, "cost": dict, "model": dict, "floor": (int, float), "error": str,
          "synthetic": bool, "label": str, "config_key": str, "predictions": dict, "environment": dict, "created": str}


def run_key(spec_hash: str, fingerprint: str, seed: int | None, mode: str, synthetic: bool = False) -> str:
    """Identity of a run: the same key means the same work, so a stored record can stand for it. With ``seed`` None,
    the identity of the configuration over its seeds (a record's ``config_key``)."""
    raw = f"{spec_hash}:{fingerprint}:{'*' if seed is None else seed}:{mode}:{'synthetic' if synthetic else 'real'}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]
