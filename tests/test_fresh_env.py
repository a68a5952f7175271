"""The Colab path, simulated: a chapter runs in a fresh Python where only its set-up cell installs mmgpt.

Colab gives a reader Python with torch and Jupyter but no mmgpt; the first code cell of every
chapter (``tools/notebooks.py``'s SETUP_TEMPLATE) then runs ``%pip install`` of the package
(``git+<repository>``, or ``$MMGPT_SOURCE``). This test builds that situation and runs a chapter
in it:

1. a new virtual environment with no system site-packages (so no mmgpt, no numpy, nothing);
2. Colab's own versions of what mmgpt and the chapters use (``tests/colab.txt``, copied from
   Colab's published pip freeze: ipywidgets 7.7.1, numpy, matplotlib, ipykernel, ...) installed
   into it from PyPI, and torch at the version this environment has (``pip install torch==X``,
   which takes the local CPU wheel on this project's machines) instead of Colab's CUDA build;
3. the working tree copied to a temporary folder (the files git would push: tracked and
   untracked-but-not-ignored), named by ``MMGPT_SOURCE``, standing in for the GitHub repository;
4. the first chapter of ``_toc.yml`` executed with nbclient in a kernel of that environment
   (``MMGPT_FRESH_CHAPTER=notebooks/NN_name.ipynb`` picks another), from a folder outside the
   checkout, as Colab runs a notebook opened from GitHub.

It then checks that every cell ran, that mmgpt was missing before and is now installed from
``MMGPT_SOURCE`` into that environment at mmgpt.__version__, that the set-up cell changed none of
Colab's packages (same versions; torch's files untouched: replacing Colab's ipywidgets breaks its
widget display, replacing its torch loses its CUDA build), and that the checked outputs (those
nbval compares) are the stored ones. Slow (minutes: pip installs torch and the Colab set; they
come from PyPI or pip's cache).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from urllib.parse import unquote, urlsplit

import nbformat
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import notebooks as nbtools  # noqa: E402

KERNEL = "mmgpt-fresh-env"
COLAB = ROOT / "tests" / "colab.txt"
# python -c PROBE NAME...: what the environment holds, with the installed version of each NAME.
PROBE = """
import importlib.metadata as md, json, pathlib, sys
out = {"prefix": sys.prefix, "versions": {}}
for name in sys.argv[1:]:
    try:
        out["versions"][name] = md.version(name)
    except md.PackageNotFoundError:
        out["versions"][name] = None
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_init_mtime_ns"] = pathlib.Path(torch.__file__).stat().st_mtime_ns
except ImportError as error:
    out["torch"] = None
try:
    import mmgpt
    out["mmgpt_file"] = mmgpt.__file__
    dist = md.distribution("mmgpt")
    out["mmgpt_version"] = dist.version
    out["mmgpt_direct_url"] = json.loads(dist.read_text("direct_url.json") or "null")
except ImportError as error:
    out["mmgpt_error"] = f"{type(error).__name__}: {error}"
print(json.dumps(out))
"""


def chapter_path() -> pathlib.Path:
    if os.environ.get("MMGPT_FRESH_CHAPTER"):
        return (ROOT / os.environ["MMGPT_FRESH_CHAPTER"]).resolve()
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    chapters = [f for f in files if f.startswith("notebooks/")]
    assert chapters, "_toc.yml lists no chapter (notebooks/...)"
    return ROOT / f"{chapters[0]}.ipynb"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would leak the test's Python into the fresh one."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")}
    env.update(extra)
    return env


def run(cmd: list[str], what: str, **kwargs) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit status {proc.returncode}): {' '.join(map(str, cmd))}\n"
                    f"{(proc.stdout + proc.stderr)[-6000:]}", pytrace=False)
    return proc.stdout


def colab_pins() -> dict[str, str]:
    """tests/colab.txt as {name: version}."""
    pins = {}
    for line in COLAB.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def probe(python: pathlib.Path, cwd: pathlib.Path, env: dict[str, str], names=()) -> dict:
    out = run([str(python), "-c", PROBE, *names], "probing the fresh environment", cwd=cwd, env=env)
    return json.loads(out.strip().splitlines()[-1])


def copy_source_tree(dest: pathlib.Path) -> None:
    """The files a push would publish: git's tracked and untracked-but-not-ignored files."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = None
    if listed is None:  # not a git checkout: everything but the usual build and environment folders
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv", "_build", ".book-offline-assets", "*.egg-info", "__pycache__", ".pytest_cache"))
        return
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)


def checked_outputs(nb, sanitize) -> list[tuple[int, str]]:
    """(cell index, text) of what nbval compares: stdout and text/plain, outside nbval-ignore-output cells."""
    texts = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "nbval-ignore-output" in cell.metadata.get("tags", []):
            continue
        stdout = "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
        if stdout:  # one text per cell: a kernel may split a stream into several outputs
            texts.append((index, sanitize(stdout)))
        for output in cell.outputs:
            if output.output_type in ("execute_result", "display_data") and "text/plain" in output.data:
                texts.append((index, sanitize(output.data["text/plain"])))
    return texts


def sanitizer():
    """tests/nbval_sanitize.cfg's regexes, applied as nbval applies them."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "tests" / "nbval_sanitize.cfg", encoding="utf-8")
    rules = [(re.compile(config[s]["regex"]), config[s].get("replace", "")) for s in config.sections()]

    def apply(text: str) -> str:
        for regex, replace in rules:
            text = regex.sub(replace, text)
        return text

    return apply


@pytest.mark.slow
def test_a_chapter_runs_where_only_its_setup_cell_installs_mmgpt(tmp_path, monkeypatch):
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(what: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[what] = now - clock
        clock = now

    try:
        _run_chapter_in_a_fresh_environment(tmp_path, monkeypatch, lap)
    finally:
        print("fresh environment timings: " + ", ".join(f"{what} {seconds:.0f} s" for what, seconds in timings.items()))


def _run_chapter_in_a_fresh_environment(tmp_path, monkeypatch, lap) -> None:
    import torch
    from nbclient import NotebookClient

    chapter = chapter_path()
    assert chapter.is_file(), f"no chapter at {chapter}"
    venv, source, work = tmp_path / "venv", tmp_path / "mmgpt-source", tmp_path / "colab"
    work.mkdir()
    python = venv / "bin" / "python"
    env = clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(venv))

    # 1-2. A fresh environment: its own site-packages only; Colab's packages, torch (the version we
    # test with) and a kernel.
    run([sys.executable, "-m", "venv", str(venv)], "creating the virtual environment", env=clean_env(), timeout=300)
    before = probe(python, work, env)
    assert before["torch"] is None and "ModuleNotFoundError" in before.get("mmgpt_error", ""), \
        f"the new environment is not fresh: {before}"
    lap("venv")
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    colab = {name: version for name, version in colab_pins().items() if name != "torch"}
    run([str(python), "-m", "pip", "install", "--quiet", "--no-compile", torch_pin,
         *(f"{name}=={version}" for name, version in colab.items())],
        f"installing {torch_pin} and Colab's packages (tests/colab.txt) into the fresh environment",
        cwd=work, env=env, timeout=1800)
    lap("torch + Colab's packages")
    before = probe(python, work, env, colab)
    assert before["torch"] and "ModuleNotFoundError" in before.get("mmgpt_error", ""), \
        f"mmgpt must be missing before the set-up cell runs: {before}"
    assert before["versions"] == colab, f"the fresh environment does not hold Colab's versions: {before['versions']}"

    # 3. The repository the set-up cell installs from, and a kernel running the fresh Python.
    copy_source_tree(source)
    assert (source / "pyproject.toml").is_file() and (source / "mmgpt" / "__init__.py").is_file()
    kernel_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh environment (mmgpt test)",
        "language": "python",
        "env": {"MMGPT_SOURCE": str(source), "VIRTUAL_ENV": str(venv), "PATH": env["PATH"]},
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        monkeypatch.delenv(name, raising=False)
    lap("source copy + kernel")

    # 4. Run the chapter, as Colab would: from a folder outside the checkout, top to bottom.
    stored = nbformat.read(chapter, as_version=4)
    nb = nbformat.read(chapter, as_version=4)
    after_setup: dict = {}

    def after_cell(cell, cell_index, execute_reply, **_):
        if "setup" in cell.metadata.get("tags", []):
            lap("set-up cell (pip installs mmgpt)")
            after_setup.update(probe(python, work, env, colab))  # the set-up cell, not a later one, installed it

    NotebookClient(nb, kernel_name=KERNEL, timeout=900, resources={"metadata": {"path": str(work)}},
                   on_cell_executed=after_cell).execute()
    lap("rest of the chapter")

    after = probe(python, work, env)
    site = pathlib.Path(after["prefix"]).resolve()
    assert after_setup, f"{chapter.name} has no code cell tagged 'setup'"
    assert after_setup.get("mmgpt_file"), f"mmgpt is not importable right after the set-up cell ran: {after_setup}"
    installed = pathlib.Path(after["mmgpt_file"]).resolve()
    assert installed.is_relative_to(site) and not installed.is_relative_to(ROOT), \
        f"mmgpt should be installed into the fresh environment ({site}), but imports from {installed}"
    direct_url = after.get("mmgpt_direct_url") or {}
    installed_from = pathlib.Path(unquote(urlsplit(direct_url.get("url", "")).path)).resolve()
    assert installed_from == source.resolve(), \
        f"mmgpt should come from MMGPT_SOURCE ({source}); pip recorded {direct_url}"
    version = nbtools.package_version()
    assert after["mmgpt_version"] == version, \
        f"installed mmgpt {after['mmgpt_version']}, mmgpt.__version__ is {version}"
    assert (after["torch"], after["torch_init_mtime_ns"]) == (before["torch"], before["torch_init_mtime_ns"]), \
        f"installing mmgpt replaced torch: {before['torch']} before, {after['torch']} after (files rewritten?)"
    changed = {name: (was, after_setup["versions"].get(name)) for name, was in before["versions"].items()
               if after_setup["versions"].get(name) != was}
    assert not changed, f"the set-up cell replaced Colab's packages (name: (Colab's, after)): {changed}"

    sanitize = sanitizer()
    expected, got = checked_outputs(stored, sanitize), checked_outputs(nb, sanitize)
    differ = [(i, e, g) for (i, e), (_, g) in zip(expected, got) if e != g]
    assert len(expected) == len(got) and not differ, (
        f"{chapter.name} gives other checked outputs in the fresh environment ({len(got)} vs {len(expected)} stored):\n"
        + "\n".join(f"cell {i}: stored {e[:300]!r}\n        fresh  {g[:300]!r}" for i, e, g in differ[:5]))
    print(f"fresh environment: {chapter.name} ran; mmgpt {after['mmgpt_version']} from MMGPT_SOURCE; "
          f"torch {after['torch']} and Colab's {len(colab)} packages kept")
