"""The pytest side of a distributed run: loaded (``-p nerbench_core.distributed.jobs``) into the collection's pytest
process, where it writes the cases and the run's options for the driver, and into each job's, where it keeps the job
to its one case and notes the case's run key and records."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from . import COLLECT_ENV, ITEM_ENV, PLUGIN, STATE_ENV

_PARSER = None  # pytest's option parser, to tell test paths from option values
_SESSION = None  # the nerbench session of a job's process


def pytest_addoption(parser):
    global _PARSER
    _PARSER = parser


def positional(parser, args: list[str]) -> list[int]:
    """The indexes of ``args`` that pytest reads as test paths (not the values of options): removing one of them
    changes nothing but the paths."""
    def parse(tokens):
        return vars(parser.parse_known_args(tokens))

    base = parse(args)
    found: list[int] = []
    for i, token in enumerate(args):
        paths = list(base.get("file_or_dir") or [])
        if token.startswith("-") or token not in paths:
            continue
        trial = [t for j, t in enumerate(args) if j != i and j not in found]
        try:
            ns = parse(trial)
        except BaseException:  # noqa: BLE001 - pytest's UsageError, argparse's SystemExit: a value, then
            continue
        paths.remove(token)
        same_options = {k: v for k, v in ns.items() if k != "file_or_dir"} == {
            k: v for k, v in base.items() if k != "file_or_dir"}
        if same_options and list(ns.get("file_or_dir") or []) == paths:
            found.append(i)
            base = ns
    return found


def pytest_collection_finish(session):
    """Collection for a distributed run: write the cases (node ids, how a job names them) and the run's options."""
    out = os.environ.get(COLLECT_ENV)
    if not out:
        return
    from .. import atomic

    config = session.config
    invocation = config.invocation_params
    user_args = list(invocation.args)[len(PLUGIN) + 2:]  # after PLUGIN, --collect-only -q
    cases, others = [], []
    for item in session.items:
        spec = getattr(getattr(item, "callspec", None), "params", {}).get("spec")
        if spec is None or "::" not in item.nodeid:
            others.append(item.nodeid)
            continue
        target = os.path.relpath(item.path, invocation.dir) + "::" + item.nodeid.split("::", 1)[1]
        cases.append({"nodeid": item.nodeid, "target": target, "case_id": item.callspec.id, "name": spec.name,
                      "seed": spec.train.seed, "path": str(item.path), "item": item.name})
    opt = config.getoption
    atomic.write_json(out, {
        "cases": cases, "others": others,
        "positional": positional(_PARSER, user_args) if _PARSER is not None else [],
        "results_dir": str(Path(opt("--results-dir")).resolve()), "cache_dir": str(Path(opt("--cache-dir")).resolve()),
        "quick": bool(opt("--quick")), "synthetic": bool(opt("--synthetic")), "label": opt("--label") or "",
        "rerun": bool(opt("--rerun")), "columns": opt("--columns"), "compare": opt("--compare"),
        "compare_fail": opt("--compare-fail"),
    })


def _write_state(update: dict) -> None:
    from .. import atomic

    path = Path(os.environ[STATE_ENV])
    state = json.loads(path.read_text()) if path.is_file() else {}
    atomic.write_json(path, {**state, **update})


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """A job runs its one case, whatever else its arguments select (a guard: they name only that case)."""
    wanted = os.environ.get(ITEM_ENV)
    if not wanted:
        return
    path, name = json.loads(wanted)
    keep = [i for i in items if str(i.path) == path and i.name == name][:1]
    if keep and len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i is not keep[0]])
        items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A job notes its case's run key before the case runs: if the process dies, the driver can still tell whether
    the case's record was written (the key is computed as Session.run computes it)."""
    global _SESSION
    if os.environ.get(STATE_ENV):
        args = getattr(item, "funcargs", {})
        spec, dataset, nerbench = args.get("spec"), args.get("ner_dataset"), args.get("nerbench")
        if spec is not None and dataset is not None and nerbench is not None:
            from ..runner import effective_spec, key_for

            _SESSION = nerbench
            try:
                key = key_for(effective_spec(spec, nerbench.options), dataset, nerbench.options)
            except Exception:  # noqa: BLE001 - the driver then goes by the records alone
                key = None
            _write_state({"case": spec.name, "run_key": key, "pid": os.getpid(), "host": socket.gethostname()})
    return (yield)


def pytest_sessionfinish(session, exitstatus):
    """A job hands its records to the driver, as an xdist worker hands them to its controller."""
    if os.environ.get(STATE_ENV) and _SESSION is not None:
        _write_state({"records": [{**r.to_dict(), "reused": r.reused} for r in _SESSION.records],
                      "exitstatus": int(exitstatus)})


