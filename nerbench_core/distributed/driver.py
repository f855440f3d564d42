"""One suite over many machines: each benchmark case becomes one job of a distributed engine (submitit: Slurm job
arrays, or local processes), every job writing its record into the same results folder.

    python -m nerbench_core.distributed [--engine local|slurm] [--max-parallel N] [--retries 1] [--folder LOGDIR]
        [--gpus IDS] [--slurm-partition P] [--slurm-gpus-per-task 1] [--slurm-time MIN] [--slurm-cpus-per-task C]
        [--slurm-mem-gb G] [--slurm-account A] [--slurm-qos Q] [--slurm-constraint C] [--slurm-setup CMD ...]
        [--slurm-param KEY=VALUE ...] -- <the pytest arguments of a local run>

e.g. ``python -m nerbench_core.distributed --engine slurm --slurm-partition gpu --slurm-time 240 -- bench --suite
offline --quick --seeds 42,43 --results-dir /shared/results`` (``nerbench submit`` is the same command).

How it goes:

1. The cases are collected first, as pytest itself would (``python -m pytest ARGS --collect-only -q``, with this
   module as a plugin that notes each case's node id and the run's options).
2. Each case is one job (on Slurm one task of a job array, one GPU per task: one process per GPU). A job runs
   ``python -m pytest -p no:cacheprovider ARGS NODEID`` (ARGS without their test paths) in the folder the command
   was started from, so the job is the local run of that one case and writes its record to the same --results-dir.
3. As jobs end, a line says the case, how it ended and how long it took. A job whose process died (killed, out of
   memory, a failed node: pytest ended by a signal or with no pytest exit code, or submitit raising for the job) is
   submitted again, up to --retries times. A case that still has no finished record is reported as failed with the
   reason (its stderr's last lines) and a failed record is written for it through nerbench's store
   (:meth:`nerbench_core.session.Session.record_crash`, as for a crashed pytest-xdist worker).
4. At the end the run's table is printed, as a local run prints it. The exit status is 0 only when every job's
   pytest exited 0.

Jobs are idempotent: a job whose case already has a record reuses it (nerbench's own run keys; --rerun trains
again), and nerbench holds a lock per run key in --cache-dir, so two jobs never train one case at once. A driver
that was stopped can be started again with the same arguments: finished cases are reused, not trained again.

On Slurm every host must see the same files at the same paths: the folder the command runs in, --results-dir,
--cache-dir (its locks and data cache), the log folder, the data, the suite, the Python environment; and nerbench
must be importable there (this module puts the folder that holds ``nerbench_core`` on PYTHONPATH, which sbatch
passes on). On Lustre the file system must be mounted with ``flock`` for the locks.

``--engine local`` runs the jobs as processes of this machine (submitit's LocalExecutor), --max-parallel at a time
(default: one per GPU of --gpus, or 1 without a GPU), each given one GPU of --gpus in turn.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import COLLECT_ENV, ITEM_ENV, PLUGIN, STATE_ENV

PROG = "nerbench submit"  # also: python -m nerbench_core.distributed
# A job's pytest passes what the case prints on to its log as it comes (pytest still reports it): a process that is
# killed leaves its last words there, not in a capture file that nobody reads. The run's own --capture/-s wins.
JOB_OPTIONS = ["--capture=tee-sys"]
PYTEST_EXIT_CODES = range(0, 6)  # ok, tests failed, interrupted, internal error, usage error, no tests
# Options that make no sense for one case of a distributed run (what to do instead)
REFUSED = {
    "-n": "each job is one process on one GPU: --max-parallel sets how many run at once",
    "--numprocesses": "each job is one process on one GPU: --max-parallel sets how many run at once",
    "--dist": "each job is one process on one GPU: --max-parallel sets how many run at once",
    "--maxprocesses": "each job is one process on one GPU: --max-parallel sets how many run at once",
    "--gpus": f"give --gpus to {PROG} (before --): it hands each local job one GPU",
    "--export": "every job would write its own: afterwards run python -m nerbench_core.report RESULTS --export FILE",
    "--save-baselines": "every job would merge into the file at once: afterwards run python -m nerbench_core.report "
                        "RESULTS --save-baselines FILE",
    "--collect-only": "the cases are collected by this command",
    "--co": "the cases are collected by this command",
}


# ---------------------------------------------------------------- a job (inside the engine's process)


@dataclass(frozen=True)
class CaseJob:
    """What one job runs: ``python -m pytest ARGS`` for one case, in ``cwd``."""

    case_id: str
    pytest_args: tuple[str, ...]
    cwd: str
    state_file: str  # the plugin's notes (run key, records)
    stderr_file: str  # pytest's stderr
    exit_file: str  # this function's account of the process (exit code, seconds, how it died)
    env: tuple[tuple[str, str], ...] = ()  # e.g. the GPU of a local job


class CaseDied(RuntimeError):
    """The pytest process of a case died (a signal, or no pytest exit code): submitit then reports the job failed."""


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        oom = -returncode == signal.SIGKILL
        why = " (out of memory? the kernel's OOM killer sends it, as does kill -9)" if oom else ""
        return f"pytest was killed by {name}{why}"
    if returncode > 128 and returncode - 128 in {s.value for s in signal.Signals}:
        return f"pytest exited with code {returncode} (killed by {signal.Signals(returncode - 128).name}?)"
    return f"pytest exited with code {returncode}, which is no pytest exit status (the process died)"


def tail(text: str, lines: int = 8) -> list[str]:
    """The last non-empty lines of ``text`` (submitit's own log lines left out)."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip() and not line.startswith("submitit ")]
    return kept[-lines:]


def run_job(job: CaseJob) -> dict:
    """Run one case's pytest in a subprocess; its exit status is the result. A process that died raises CaseDied."""
    for path in (job.state_file, job.exit_file):
        Path(path).unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", *job.pytest_args]
    env = {**os.environ, STATE_ENV: job.state_file, "PYTHONUNBUFFERED": "1", **dict(job.env)}
    print(f"nerbench: {job.case_id} on {socket.gethostname()}: {shlex.join(command)}", flush=True)
    start = time.monotonic()
    with open(job.stderr_file, "w", encoding="utf-8") as stderr:
        returncode = subprocess.run(command, cwd=job.cwd, env=env, stderr=stderr).returncode
    seconds = time.monotonic() - start
    text = Path(job.stderr_file).read_text(encoding="utf-8", errors="replace")
    sys.stderr.write(text[-20000:])  # into the engine's log of the job too
    result = {"returncode": returncode, "seconds": seconds, "host": socket.gethostname()}
    if returncode not in PYTEST_EXIT_CODES:
        result["died"] = how_it_ended(returncode)
    from .. import atomic

    atomic.write_json(job.exit_file, result)
    if "died" in result:
        raise CaseDied(f"{job.case_id}: {result['died']}; stderr: {' | '.join(tail(text, 3)) or '(empty)'}")
    return result


# ---------------------------------------------------------------- the driver


@dataclass
class Case:
    case_id: str
    nodeid: str
    target: str
    name: str
    seed: int
    path: str
    item: str
    attempts: int = 0
    job: object = None
    job_id: str = ""
    gpu: str | None = None
    submitted: float = 0.0
    outcome: str = ""  # passed, failed, error, crashed
    ok: bool = False
    seconds: float = 0.0
    records: list = field(default_factory=list)
    reason: str = ""

    def files(self, run_dir: Path) -> dict[str, Path]:
        stem = run_dir / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in self.case_id)}.{self.attempts}"
        return {"state": Path(f"{stem}.state.json"), "stderr": Path(f"{stem}.stderr"),
                "exit": Path(f"{stem}.exit.json")}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, usage=f"{PROG} [options] -- <pytest arguments of a local run>",
        description="Run a nerbench suite as one job per case on a distributed engine (submitit: Slurm job arrays, "
                    "or local processes); records go to the run's --results-dir, the table is printed at the end.",
        epilog="e.g. " + PROG + " --engine slurm --slurm-partition gpu --slurm-time 240 -- bench --suite offline "
               "--quick --seeds 42,43 --results-dir /shared/results. On Slurm, the working folder, --results-dir, "
               "--cache-dir, the log folder, the data and the Python environment must be on a file system every "
               "node sees at the same path.")
    ap.add_argument("--engine", choices=["local", "slurm"], default="local",
                    help="slurm: a Slurm job array (submitit); local: processes of this machine (default)")
    ap.add_argument("--max-parallel", type=int, default=None, metavar="N",
                    help="jobs running at once (Slurm: the array's %%N; local default: one per GPU, 1 without GPUs)")
    ap.add_argument("--retries", type=int, default=1, metavar="K",
                    help="submit a job whose process died (killed, out of memory, node failure) again up to K times "
                         "(default 1)")
    ap.add_argument("--folder", default=None, metavar="LOGDIR",
                    help="submitit's folder (job scripts, pickles, logs); default CACHE_DIR/submitit")
    ap.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                    help="how often to look at the jobs (default 1 local, 20 on Slurm)")
    ap.add_argument("--gpus", default=None, metavar="IDS",
                    help="local engine: the GPUs to hand out, one per running job, e.g. 0,1,2,3 (default: "
                         "CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists)")
    ap.add_argument("--timeout-min", type=float, default=7 * 24 * 60, metavar="MIN",
                    help="local engine: a job running longer is stopped (default a week)")
    g = ap.add_argument_group("slurm")
    g.add_argument("--slurm-partition", default=None, metavar="P")
    g.add_argument("--slurm-gpus-per-task", type=int, default=1, metavar="G",
                   help="GPUs of each job (default 1: nerbench runs one case on one GPU)")
    g.add_argument("--slurm-time", type=int, default=24 * 60, metavar="MIN", help="time limit of each job (minutes)")
    g.add_argument("--slurm-cpus-per-task", type=int, default=None, metavar="C")
    g.add_argument("--slurm-mem-gb", type=float, default=None, metavar="G")
    g.add_argument("--slurm-account", default=None)
    g.add_argument("--slurm-qos", default=None)
    g.add_argument("--slurm-constraint", default=None)
    g.add_argument("--slurm-exclude", default=None, metavar="NODES")
    g.add_argument("--slurm-setup", action="append", default=[], metavar="CMD",
                   help="a shell line run before each job, e.g. 'source ~/venv/bin/activate' (repeatable)")
    g.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm-param mail-type=END (repeatable)")
    return ap


def refused(bench_args: list[str]) -> str | None:
    for token in bench_args:
        name = "-n" if re.fullmatch(r"-n(\d+|auto|logical)?", token) else token.split("=", 1)[0]
        if name in REFUSED:
            return f"{token}: not for a distributed run: {REFUSED[name]}"
    return None


def slurm_parameters(args) -> dict:
    """submitit's AutoExecutor parameters for Slurm: one task on one node with --slurm-gpus-per-task GPUs."""
    params = {"name": "nerbench", "timeout_min": args.slurm_time, "nodes": 1, "tasks_per_node": 1,
              "gpus_per_node": args.slurm_gpus_per_task}
    if args.max_parallel:
        params["slurm_array_parallelism"] = args.max_parallel
    for key, value in (("slurm_partition", args.slurm_partition), ("cpus_per_task", args.slurm_cpus_per_task),
                       ("mem_gb", args.slurm_mem_gb), ("slurm_account", args.slurm_account),
                       ("slurm_qos", args.slurm_qos), ("slurm_constraint", args.slurm_constraint),
                       ("slurm_exclude", args.slurm_exclude)):
        if value is not None:
            params[key] = value
    if args.slurm_setup:
        params["slurm_setup"] = list(args.slurm_setup)
    extra = {}
    for text in args.slurm_param:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--slurm-param {text!r}: expected KEY=VALUE, e.g. mail-type=END")
        extra[key.strip()] = value
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def make_executor(args, folder: Path):
    import submitit

    if args.engine == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**slurm_parameters(args))
    else:
        executor = submitit.LocalExecutor(folder=folder)
        # the local job's own process sees no GPU; its pytest gets the one run_job is handed (CaseJob.env)
        executor.update_parameters(timeout_min=args.timeout_min, gpus_per_node=0)
    return executor


def local_gpus(text: str | None) -> list[str]:
    """The GPUs local jobs are handed: --gpus, else CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists."""
    from ..startup import visible_gpus

    ids = text if text is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    if ids is not None:
        return [g.strip() for g in ids.split(",") if g.strip()]
    return visible_gpus()


def collect(bench_args: list[str], run_dir: Path) -> tuple[dict | None, int]:
    """The cases, collected by pytest as the local run would collect them (this module as a plugin)."""
    out = run_dir / "collect.json"
    command = [sys.executable, "-m", "pytest", *PLUGIN, "--collect-only", "-q", *bench_args]
    proc = subprocess.run(command, env={**os.environ, COLLECT_ENV: str(out)}, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        print(f"nerbench distributed: collecting the cases failed (pytest exit status {proc.returncode}): "
              f"{shlex.join(command)}", file=sys.stderr)
        print("\n".join((proc.stdout + proc.stderr).splitlines()[-30:]), file=sys.stderr)
        return None, proc.returncode or 1
    return json.loads(out.read_text()), 0


class Driver:
    def __init__(self, args, info: dict, bench_args: list[str], folder: Path, run_dir: Path, executor):
        self.args, self.info, self.folder, self.run_dir, self.executor = args, info, folder, run_dir, executor
        skip = set(info["positional"])
        self.job_args = [a for i, a in enumerate(bench_args) if i not in skip]
        self.cases = [Case(c["case_id"], c["nodeid"], c["target"], c["name"], c["seed"], c["path"], c["item"])
                      for c in info["cases"]]
        self.local = args.engine == "local"
        self.gpus = local_gpus(args.gpus) if self.local else []
        self.max_parallel = args.max_parallel or (max(1, len(self.gpus)) if self.local else None)
        self.poll = args.poll if args.poll is not None else (1.0 if self.local else 20.0)
        self.pending: deque[Case] = deque(self.cases)
        self.running: list[Case] = []
        self.done = 0
        self.start = time.monotonic()
        self.cwd = os.getcwd()

    def say(self, text: str) -> None:
        print(f"nerbench distributed: {text}", flush=True)

    # ---- submitting

    def job_for(self, case: Case) -> CaseJob:
        case.attempts += 1
        files = case.files(self.run_dir)
        env = [(ITEM_ENV, json.dumps([case.path, case.item]))]
        if self.local:
            busy = [c.gpu for c in self.running if c is not case]
            case.gpu = min(self.gpus, key=busy.count) if self.gpus else None  # the least shared GPU
            env.append(("CUDA_VISIBLE_DEVICES", case.gpu or ""))
        return CaseJob(case.case_id, (*PLUGIN, *JOB_OPTIONS, *self.job_args, case.target), self.cwd,
                       str(files["state"]), str(files["stderr"]), str(files["exit"]), tuple(env))

    def submit(self) -> None:
        if self.local:  # one process each, up to --max-parallel at once
            batch = []
            while self.pending and len(self.running) + len(batch) < self.max_parallel:
                case = self.pending.popleft()
                case.gpu = None
                self.running.append(case)  # so the next one gets another GPU
                batch.append(case)
            for case in batch:
                case.job = self.executor.submit(run_job, self.job_for(case))
                self._submitted(case)
            return
        if not self.pending:  # Slurm: the waiting cases as one job array (the array's %N bounds what runs)
            return
        batch = list(self.pending)
        self.pending.clear()
        jobs = self.executor.map_array(run_job, [self.job_for(c) for c in batch])
        for case, job in zip(batch, jobs):
            case.job = job
            self.running.append(case)
            self._submitted(case)

    def _submitted(self, case: Case) -> None:
        case.job_id = str(case.job.job_id)
        case.submitted = time.monotonic()
        gpu = f", GPU {case.gpu}" if case.gpu else ""
        again = f", attempt {case.attempts} of {self.args.retries + 1}" if case.attempts > 1 else ""
        self.say(f"{case.case_id}: submitted as job {case.job_id}{gpu}{again}")

    # ---- waiting

    def run(self) -> None:
        self.submit()
        while self.running:
            time.sleep(self.poll)
            for case in [c for c in self.running if c.job.done()]:
                self.running.remove(case)
                self.finished(case)
            self.submit()

    def cancel(self) -> None:
        for case in self.running:
            try:
                case.job.cancel(check=False)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass

    def finished(self, case: Case) -> None:
        from ..reporting.records import RunRecord

        files = case.files(self.run_dir)
        died = None
        try:
            result = case.job.result()
        except Exception as err:  # noqa: BLE001 - submitit raises for a job that failed or never ran
            result = None
            state = f" ({case.job.state})" if not self.local else ""  # Slurm's: OUT_OF_MEMORY, NODE_FAIL, TIMEOUT...
            died = f"the job died{state}: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
        ended, state = _read_json(files["exit"]), _read_json(files["state"])
        died = ended.get("died") or died  # how its pytest died, where the job saw it
        case.seconds = ended.get("seconds") or (time.monotonic() - case.submitted)
        records = []
        for d in state.get("records", []):
            record = RunRecord.from_dict(d)
            record.folder, record.reused = self.info["results_dir"], bool(d.get("reused"))
            records.append(record)
        where = f"job {case.job_id}" + (f" on {ended['host']}" if ended.get("host") else "") + self._attempt(case)
        count = f"[{self.done + 1}/{len(self.cases)}] {case.case_id}"
        if died is None:
            returncode = result["returncode"]
            case.records, case.ok = records, returncode == 0
            self.done += 1
            if returncode in (0, 1) and records:
                record = records[-1]
                case.outcome = record.status + (" (reused)" if record.reused else "")
                error = f": {record.error.splitlines()[0][:200]}" if record.error else ""
                self.say(f"{count}: {case.outcome} in {case.seconds:.0f}s ({where}){error}")
            elif returncode == 0:
                case.outcome = "passed"
                self.say(f"{count}: passed in {case.seconds:.0f}s ({where})")
            else:  # a usage or collection error, an interruption: pytest ran, the case did not
                case.outcome = "error"
                case.reason = f"pytest exited with code {returncode} ({where}){self._stderr(case, files)}"
                self.say(f"{count}: failed in {case.seconds:.0f}s: pytest exited with code {returncode} ({where})")
                self._show_tail(case, files)
                self._record_crash(case)
            return
        stored = self._stored(state)
        if stored is not None:  # it died after its record was written: the record stands
            case.records, case.ok, case.outcome = [stored], stored.status == "passed", f"{stored.status} (recorded)"
            self.done += 1
            self.say(f"{count}: {case.outcome} in {case.seconds:.0f}s ({where}; its process died after writing its "
                     f"record: {died})")
            return
        if case.attempts <= self.args.retries:
            self.say(f"{case.case_id}: died after {case.seconds:.0f}s ({where}): {died}; submitting it again")
            self._show_tail(case, files)
            self.pending.append(case)
            return
        case.outcome, case.reason = "crashed", f"{died} ({where}){self._stderr(case, files)}"
        self.done += 1
        self.say(f"{count}: failed in {case.seconds:.0f}s: {died} ({where})")
        self._show_tail(case, files)
        self._record_crash(case)

    def _attempt(self, case: Case) -> str:
        return f", attempt {case.attempts} of {self.args.retries + 1}" if self.args.retries else ""

    def _tail(self, case: Case, files: dict[str, Path]) -> list[str]:
        """The last lines pytest wrote to stderr; where the job ended without a word on its pytest (the job itself
        died: node failure, its whole allocation killed), the engine's log of the job too."""
        text = files["stderr"].read_text(encoding="utf-8", errors="replace") if files["stderr"].is_file() else ""
        if files["exit"].is_file():
            return tail(text)
        try:
            return tail(text + "\n" + (case.job.stderr() or ""))
        except Exception:  # noqa: BLE001 - no log to read
            return tail(text)

    def _stderr(self, case: Case, files: dict[str, Path]) -> str:
        lines = self._tail(case, files)
        return "; stderr: " + (" | ".join(lines[-3:])[-400:] if lines else "(empty)")

    def _show_tail(self, case: Case, files: dict[str, Path]) -> None:
        for line in self._tail(case, files) or ["(stderr empty)"]:
            print(f"    {line[:300]}", flush=True)
        try:
            print(f"    log: {case.job.paths.stdout}", flush=True)
        except Exception:  # noqa: BLE001 - only a pointer
            pass

    def _stored(self, state: dict):
        """The finished record of a case whose process died, if it was written before it died (not with --rerun:
        an older record has the same key)."""
        if self.info["rerun"] or not state.get("run_key"):
            return None
        from ..reporting.store import ResultStore

        return ResultStore(self.info["results_dir"]).find(state["run_key"], state.get("case"))

    def _record_crash(self, case: Case) -> None:
        from ..options import RunOptions
        from ..session import Session

        options = RunOptions(cache_dir=Path(self.info["cache_dir"]), quick=self.info["quick"],
                             synthetic=self.info["synthetic"], label=self.info["label"])
        record = Session(options, self.info["results_dir"]).record_crash(case.nodeid, case.reason[:600])
        record.folder = self.info["results_dir"]
        case.records = [record]
        case.ok = False

    # ---- the end

    def table(self) -> None:
        from ..reporting.baselines import Baselines
        from ..reporting.summary import summary

        records = [r for c in self.cases for r in c.records]
        if not records:
            return
        compare = self.info.get("compare")
        baselines = Baselines.load(compare, self.info["compare_fail"]) if compare else None
        text, _ = summary(records, baselines, self.info.get("columns") or "default")
        print("=" * 30 + " nerbench results " + "=" * 30)
        print(text)
        print(f"records: {self.info['results_dir']}", flush=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    if "--" not in argv:
        if any(a in ("-h", "--help") for a in argv):
            ap.print_help()
            return 0
        ap.error("give the pytest arguments of the run after --, e.g. -- bench --suite offline --quick")
    split = argv.index("--")
    args, bench_args = ap.parse_args(argv[:split]), argv[split + 1:]
    if args.retries < 0 or (args.max_parallel is not None and args.max_parallel < 1):
        ap.error("--retries must be >= 0 and --max-parallel >= 1")
    problem = refused(bench_args)
    if problem:
        ap.error(problem)
    if args.engine == "slurm":
        try:
            slurm_parameters(args)
        except ValueError as err:
            ap.error(str(err))
    try:
        import submitit  # noqa: F401
    except ImportError:
        print("nerbench distributed: needs submitit (pip install submitit==1.5.4)", file=sys.stderr)
        return 4
    # the jobs import this package: make it importable wherever they run (sbatch passes the environment on)
    root = str(Path(__file__).resolve().parent.parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])

    with tempfile.TemporaryDirectory(prefix="nerbench-collect-") as tmp:
        info, status = collect(bench_args, Path(tmp))
    if info is None:
        return status
    for nodeid in info["others"]:
        print(f"nerbench distributed: {nodeid}: not a benchmark case, left out", file=sys.stderr)
    if not info["cases"]:
        print("nerbench distributed: no benchmark cases selected", file=sys.stderr)
        return 5
    folder = Path(args.folder or Path(info["cache_dir"]) / "submitit").resolve()
    run_dir = folder / f"nerbench-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        executor = make_executor(args, folder)
    except RuntimeError as err:  # submitit: no srun here (not a Slurm host)
        print(f"nerbench distributed: --engine {args.engine}: {err}", file=sys.stderr)
        return 4
    driver = Driver(args, info, bench_args, folder, run_dir, executor)
    limit = f", {driver.max_parallel} at a time" if driver.max_parallel else ""
    driver.say(f"{len(driver.cases)} cases as {args.engine} jobs{limit}; job logs in {folder}")
    try:
        driver.run()
    except KeyboardInterrupt:
        driver.cancel()
        left = [c.case_id for c in driver.cases if not c.outcome]
        print(f"\nnerbench distributed: interrupted; jobs cancelled: {', '.join(left)}. The same command again "
              "reuses the finished cases' records.", file=sys.stderr)
        return 2
    driver.table()
    failed = [c for c in driver.cases if not c.ok]
    summary = f"{len(driver.cases) - len(failed)} of {len(driver.cases)} cases passed"
    driver.say(summary + (f"; not passed: {', '.join(c.case_id for c in failed)}" if failed else "")
               + f" ({time.monotonic() - driver.start:.0f}s)")
    return 0 if not failed else 1
