"""Live progress of the cases that are training: events from the training callbacks, as lines a person reads.

A case reports events (start, a step every few seconds, each epoch's end, each dev scoring) to a sink. In one
process the plugin writes them to the terminal; a pytest-xdist worker appends them, as JSON lines, to a file in a
folder the controller watches (:class:`Tail`), and the controller prints them, so every worker's progress reaches
the terminal the run was started from.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def describe(case: str, e: dict) -> str:
    """One line for an event."""
    kind = e.get("event")
    if kind == "load":
        return f"{case}: loading {e.get('model')}"
    if kind == "loaded":
        return f"{case}: model ready in {duration(e.get('seconds'))}"
    if kind == "start":
        resumed = f", resumed at step {e['step']}" if e.get("step") else ""
        epochs = e.get("epochs") or 0
        return f"{case}: training, {e.get('steps')} steps over {epochs:g} epoch{'' if epochs == 1 else 's'}{resumed}"
    if kind == "dev":
        f1 = "undefined" if e.get("dev_f1") is None else f"{100 * e['dev_f1']:.2f}"
        return f"{case}: dev F1 {f1} at epoch {e.get('epoch'):g} (best so far: epoch {e.get('best_epoch'):g})"
    if kind in ("step", "epoch"):
        loss = "" if e.get("loss") is None else f", loss {e['loss']:.4f}"
        rate = "" if not e.get("tokens_per_second") else f", {e['tokens_per_second']:,.0f} tok/s"
        pct = 100 * e["step"] / e["steps"] if e.get("steps") else 0
        return (f"{case}: step {e['step']}/{e.get('steps')} ({pct:.0f}%), epoch {e.get('epoch', 0):.2f}{loss}{rate}, "
                f"ETA {duration(e.get('eta_seconds'))}")
    return f"{case}: {e}"


def bar(e: dict, width: int = 20) -> str:
    """A step event as a bar, for a terminal line rewritten in place."""
    done = int(width * e["step"] / e["steps"]) if e.get("steps") else 0
    return "[" + "#" * done + "." * (width - done) + "]"


class FileSink:
    """Appends a case's events to ``path`` as JSON lines (one writer per file: an xdist worker's)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def for_case(self, case: str) -> Callable[[dict], None]:
        def report(event: dict) -> None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"case": case, **event}, default=str) + "\n")
        return report


class Tail(threading.Thread):
    """Reads the JSON lines that workers append to files in ``folder`` and hands each event to ``emit``."""

    def __init__(self, folder: Path, emit: Callable[[str, dict], None], every: float = 1.0):
        super().__init__(daemon=True, name="nerbench-progress")
        self.folder, self.emit, self.every = folder, emit, every
        self.offsets: dict[Path, int] = {}
        self.stopping = threading.Event()

    def poll(self) -> None:
        for path in sorted(self.folder.glob("*.jsonl")):
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.decode("utf-8").splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.emit(event.pop("case", "?"), event)

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            self.poll()
        self.poll()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
