"""What the Trainer calls back into while a case trains: dev selection, the loss curve, the steady rate, live
progress and the profiler."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import TrainerCallback

from .. import atomic
from .batching import CountingCollator


def synchronize() -> None:
    """Waits for the GPU's queued work: a clock read after it times what has run."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class BestOnDev(TrainerCallback):
    """Scores dev after each epoch, keeps the best epoch's trainable weights, restores them at the end.

    With ``by_f1`` false (a dev split without entities, where every epoch's F1 is undefined) the last epoch is kept,
    and :attr:`selection` says so.
    """

    def __init__(self, evaluate: Callable[[nn.Module], dict], collator: CountingCollator, by_f1: bool = True,
                 report: Callable[[dict], None] | None = None):
        self.evaluate = evaluate
        self.collator = collator
        self.by_f1 = by_f1
        self.report = report
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_predictions = None  # what evaluate returned under "predictions" at the kept epoch (not saved)
        self._best_weights: dict[str, torch.Tensor] = {}
        self._last_step = -1

    @property
    def selection(self) -> str:
        return "best dev F1" if self.by_f1 else "last epoch (the dev split has no entities: F1 is undefined)"

    def _better(self, f1: float | None) -> bool:
        if self.best is None or not self.by_f1:
            return True
        return f1 is not None and (self.best["dev_f1"] is None or f1 > self.best["dev_f1"])

    def _score(self, state, model) -> None:
        if state.global_step == self._last_step:
            return
        self._last_step = state.global_step
        self.collator.counting = False  # dev batches are not training tokens
        # The host queues training steps ahead of the GPU (graph replays wait on nothing): the clock starts once they
        # have run, or their time would be counted as dev scoring's and left out of training's
        synchronize()
        t0 = time.perf_counter()
        metrics = dict(self.evaluate(model))
        predictions = metrics.pop("predictions", None)
        self.collator.counting = True
        entry = {"epoch": round(state.epoch or 0, 3), "step": state.global_step, "dev_f1": metrics["f1"],
                 "seconds": time.perf_counter() - t0}
        self.history.append(entry)
        if self._better(metrics["f1"]):
            self.best, self.best_predictions = dict(entry), predictions
            self._best_weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        if self.report:
            self.report({"event": "dev", **entry, "best_epoch": self.best["epoch"]})

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._score(state, model)

    # The selection travels with Trainer checkpoints, so a resumed case still picks its best epoch among all. The
    # Trainer calls on_save after writing a checkpoint (and after deleting older ones): the selection file, written
    # last and atomically, marks a checkpoint complete (checkpoints.last_complete).
    def on_save(self, args, state, control, **kwargs):
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self._best_weights:
            save_file({k: v.contiguous() for k, v in self._best_weights.items()}, str(folder / BEST_WEIGHTS_FILE))
        atomic.write_json(folder / SELECTION_FILE, {"history": self.history, "best": self.best,
                                                    "last_step": self._last_step}, indent=None)

    def restore(self, checkpoint: Path) -> None:
        from safetensors.torch import load_file

        saved = json.loads((checkpoint / SELECTION_FILE).read_text())
        self.history, self.best, self._last_step = saved["history"], saved["best"] or None, saved["last_step"]
        if (checkpoint / BEST_WEIGHTS_FILE).is_file():
            self._best_weights = load_file(str(checkpoint / BEST_WEIGHTS_FILE))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._score(state, model)  # a fractional last epoch ends without on_epoch_end
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self._best_weights.items():
                params[name].copy_(value.to(params[name].device))


SELECTION_FILE = "nerbench_selection.json"
BEST_WEIGHTS_FILE = "nerbench_best_trainable.safetensors"


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest Trainer checkpoint in ``folder`` that holds its selection file; a checkpoint cut off before it
    was written is passed over (the Trainer keeps the one before until the next is written, save_total_limit 2)."""
    if not folder.is_dir():
        return None
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / SELECTION_FILE).is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


class CheckpointClock(TrainerCallback):
    """Times the Trainer's checkpoint at each epoch's end (the adapter, optimizer and selection written to disk), from
    the epoch's end callbacks before it (dev scoring, the best epoch's weights copied) to the last file, so that
    training's time and rate leave it out as they leave out dev scoring. Goes after :class:`BestOnDev` in the
    callbacks: its on_epoch_end scores dev, its on_save writes last."""

    def __init__(self):
        self.saves: list[dict] = []  # {"step", "seconds"}, as BestOnDev's history
        self._since: float | None = None

    @property
    def seconds(self) -> float:
        return sum(s["seconds"] for s in self.saves)

    def on_epoch_end(self, args, state, control, **kwargs):
        synchronize()  # queued steps are training's (BestOnDev waits for them too, unless it scored this step already)
        self._since = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        if self._since is not None:
            self.saves.append({"step": state.global_step, "seconds": time.perf_counter() - self._since})
            self._since = None


class LossCurve(TrainerCallback):
    def __init__(self):
        self.points: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.points.append({"step": state.global_step, "epoch": round(state.epoch or 0, 3), "loss": logs["loss"]})
            if not math.isfinite(logs["loss"]):
                raise FloatingPointError(f"training loss is {logs['loss']} at step {state.global_step}")


class SteadyRate(TrainerCallback):
    """Marks the end of the first ``warmup`` steps (kernel selection, allocator growth, first compilations), so
    that throughput can also be given without them: short benchmark runs are otherwise dominated by them."""

    def __init__(self, collator: CountingCollator, warmup: int = 3):
        self.collator, self.warmup = collator, warmup
        self.mark: tuple[float, int] | None = None  # (time, real tokens so far) after the warm-up steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup and self.mark is None:
            synchronize()
            self.mark = (time.perf_counter(), self.collator.real_tokens)

    def rate(self, end: float, pauses: list[dict]) -> float | None:
        """Real tokens per second from the mark to ``end``, the pauses after the mark (dev scorings, checkpoints:
        ``{"step", "seconds"}``) not counted."""
        if self.mark is None:
            return None
        mark_time, mark_tokens = self.mark
        # a pause at the warm-up's last step (an epoch's end) comes after the mark, taken at that step's end
        seconds = end - mark_time - sum(p["seconds"] for p in pauses if p["step"] >= self.warmup)
        tokens = self.collator.real_tokens - mark_tokens
        return tokens / seconds if seconds > 0 and tokens > 0 else None


class Progress(TrainerCallback):
    """Live progress events while a case trains: step of total, loss, tokens/s and the time left, at most every
    ``every`` seconds and at each epoch's end (dev F1 comes from :class:`BestOnDev`). ``report`` takes each event
    (a dict) to wherever the run shows it: the terminal, or a file the pytest-xdist controller reads.

    ``one_off`` gives the seconds and steps of training so far that later steps will not repeat (each CUDA graph
    shape's first step, which in a fresh process includes Triton's compilations: about 9 s for the 7B's first), left
    out of the time left: the 7B's first line said 26 minutes left of a 90-second run."""

    def __init__(self, report: Callable[[dict], None], collator: CountingCollator, every: float = 10.0,
                 one_off: Callable[[], tuple[float, int]] = lambda: (0.0, 0)):
        self.report, self.collator, self.every, self.one_off = report, collator, every, one_off
        self.start = self.last = 0.0
        self.loss: float | None = None
        self.first_step = 0
        self.paused_at: float | None = None  # an epoch's end: dev scoring (and a checkpoint) until the next step
        self.paused = 0.0  # seconds not spent training, left out of the rate and the time left

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last = time.perf_counter()
        self.first_step = state.global_step  # a resumed run starts past 0
        self.report({"event": "start", "step": state.global_step, "steps": state.max_steps,
                     "epochs": args.num_train_epochs})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]

    def on_step_begin(self, args, state, control, **kwargs):
        if self.paused_at is not None:
            self.paused += time.perf_counter() - self.paused_at
            self.paused_at = None

    def _event(self, state, kind: str) -> dict:
        elapsed = time.perf_counter() - self.start - self.paused
        left = state.max_steps - state.global_step
        once_seconds, once_steps = self.one_off()
        recurring = state.global_step - self.first_step - once_steps  # steps like the ones left
        return {"event": kind, "step": state.global_step, "steps": state.max_steps, "epoch": round(state.epoch or 0, 2),
                "loss": self.loss, "tokens_per_second": self.collator.real_tokens / elapsed if elapsed > 0 else None,
                "eta_seconds": max(0.0, elapsed - once_seconds) / recurring * left if recurring > 0 else None}

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.report(self._event(state, "step"))

    def on_epoch_end(self, args, state, control, **kwargs):
        synchronize()  # the epoch's queued steps are training, not the pause
        self.report(self._event(state, "epoch"))
        self.paused_at = time.perf_counter()


class ProfileSteps(TrainerCallback):
    """torch.profiler and Python's cProfile over a few steps after the warm-up. The operator tables (by CUDA time,
    then by the host's own time per operator) go to ``path``; the Python functions by own time and by cumulative
    time to ``path`` with suffix ``.python.txt``: where a step's host time goes when the GPU waits on it."""

    def __init__(self, path: Path, first: int = 4, steps: int = 3):
        self.path, self.first, self.last = path, first, first + steps - 1
        self.profiler = None
        self.python = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.first and self.profiler is None:
            import cProfile

            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.profiler = profile(activities=activities)
            self.profiler.__enter__()
            self.python = cProfile.Profile()
            self.python.enable()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None and (state.global_step == self.last or state.global_step == state.max_steps):
            import io
            import pstats

            self.python.disable()
            self.last = state.global_step
            self.profiler.__exit__(None, None, None)
            sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
            table = self.profiler.key_averages()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(f"steps {self.first}-{self.last}\n" + table.table(sort_by=sort, row_limit=120)
                                 + "\nby the host's own time\n" + table.table(sort_by="self_cpu_time_total", row_limit=40))
            text = io.StringIO()
            stats = pstats.Stats(self.python, stream=text)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(60)
            self.path.with_suffix(".python.txt").write_text(f"steps {self.first}-{self.last}\n" + text.getvalue())
            self.profiler = self.python = None
