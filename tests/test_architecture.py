"""The import contracts in pyproject.toml ([tool.importlinter]), checked in-process by import-linter: the layers of
nerbench_core (top imports bottom, never the reverse), no torch/transformers/peft/bitsandbytes in the light modules,
pytest only in the plugin. One test per contract; a broken one prints import-linter's report of the imports that
break it. The same check from a shell: lint-imports (in the repository)."""
import pkgutil
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
CONFIG = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
CONTRACTS = {c["id"]: c for c in CONFIG["contracts"]}


def top_level_modules() -> set[str]:
    """Every module and package directly under nerbench_core (from the files, not the import graph)."""
    return {f"nerbench_core.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "nerbench_core")])}


@pytest.mark.parametrize("contract", sorted(CONTRACTS))
def test_contract_is_kept(contract, monkeypatch, capsys):
    import importlinter.api  # noqa: F401  (configures import-linter: its file system, graph builder, readers)
    from importlinter.application.use_cases import lint_imports

    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))  # the graph is built from this checkout's nerbench_core
    monkeypatch.setenv("COLUMNS", "160")
    kept = lint_imports(str(PYPROJECT), limit_to_contracts=(contract,), cache_dir=None, no_logo=True)
    report = capsys.readouterr().out
    assert kept, f"import contract {contract!r} ({CONTRACTS[contract]['name']}) is broken:\n{report}"


def test_pytest_contract_lists_every_module_but_the_plugins():
    """A new module of nerbench_core is held to "only the plugins import pytest" too: it must be listed (the
    distributed package by its driver: its other module, jobs, is the plugin its jobs load)."""
    listed = set(CONTRACTS["pytest-only-in-plugin"]["source_modules"])
    wanted = (top_level_modules() - {"nerbench_core.plugin", "nerbench_core.distributed"}) | {
        "nerbench_core.distributed.driver"}
    assert listed == wanted, (f"pyproject.toml, contract pytest-only-in-plugin: add {sorted(wanted - listed)}, "
                              f"remove {sorted(listed - wanted)}")


def test_layers_name_the_entry_points():
    """The entry points sit where the start needs them: __main__ above cli, bootstrap below it (stdlib only)."""
    layers = [{m.strip().strip("()") for m in layer.split("|")} for layer in CONTRACTS["layers"]["layers"]]
    index = {m: i for i, layer in enumerate(layers) for m in layer}
    assert index["__main__"] < index["cli"] < index["perf"] and index["cli"] < index["bootstrap"]
    assert index["plugin"] == 0
