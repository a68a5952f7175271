"""Packaging that holds: one version string, one list of dependencies (environment.yml and
`make book`'s environment are written from pyproject.toml), bounds that Google Colab's own
packages meet, a book build that needs neither torch nor mmgpt, and tools/ holding only what
something uses."""
from __future__ import annotations

import ast
import importlib.metadata as md
import pathlib
import re
import sys

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import notebooks as nbtools  # noqa: E402
import requirements  # noqa: E402

PYPROJECT = requirements.load_pyproject()
PROJECT = PYPROJECT["project"]


def requirement_map(lines) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def colab_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "tests" / "colab.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_one_version_string():
    """mmgpt.__version__ is the only place: pyproject reads it, the installed metadata and the
    chapters' set-up cell (its git tag) agree with it."""
    import mmgpt

    assert "version" not in PROJECT and "version" in PROJECT["dynamic"], "pyproject.toml must not state a version"
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mmgpt.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", mmgpt.__version__), mmgpt.__version__
    assert nbtools.package_version() == mmgpt.__version__
    assert md.version("mmgpt") == mmgpt.__version__, \
        "the installed metadata is stale: reinstall with `pip install -e '.[book,test]'`"
    assert nbtools.release_tag() == f"v{mmgpt.__version__}"
    assert f"@v{mmgpt.__version__}\"" in nbtools.setup_source()
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "_config.yml"]:
        found = re.findall(r"(?<![\w.])\d+\.\d+\.\d+(?![\w.])", path.read_text(encoding="utf-8"))
        assert mmgpt.__version__ not in found, f"{path.name} repeats the version {mmgpt.__version__}"


def test_environment_yml_is_written_from_pyproject():
    committed = (ROOT / "environment.yml").read_text(encoding="utf-8")
    assert committed == requirements.environment(PYPROJECT), \
        "environment.yml differs from pyproject.toml: run `make environment.yml`"
    env = yaml.safe_load(committed)
    conda = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0] for d in env["dependencies"] if isinstance(d, str)}
    for requirement in PROJECT["dependencies"]:
        name = canonicalize_name(Requirement(requirement).name)
        assert requirements.CONDA_NAMES.get(name, name) in conda, f"environment.yml lacks {name}"
    assert "jupyterlab" in conda


def test_colab_versions_meet_every_bound():
    """The set-up cell's `pip install` leaves Colab's packages alone only if Colab's versions
    already meet mmgpt's bounds (pip upgrades a package only when its version does not).
    Colab's widget display needs its own ipywidgets 7.7.1."""
    pins = colab_pins()
    assert pins["ipywidgets"].startswith("7."), "tests/colab.txt: Colab pins ipywidgets 7 for its widget manager"
    runtime = requirement_map(PROJECT["dependencies"])
    missing = set(runtime) - set(pins)
    assert not missing, f"tests/colab.txt does not say which version Colab has of {sorted(missing)}"
    unmet = {name: (str(req.specifier), pins[name]) for name, req in runtime.items()
             if not req.specifier.contains(pins[name], prereleases=True)}
    assert not unmet, f"Colab's versions fail pyproject.toml's bounds (bound, Colab's): {unmet}"


def test_the_book_environment_holds_no_torch_and_no_mmgpt():
    book = requirement_map(requirements.extra("book", PYPROJECT))
    runtime = requirement_map(PROJECT["dependencies"])
    assert "jupyter-book" in book
    assert not set(book) & (set(runtime) | {"mmgpt"}), \
        f"the book extra pulls runtime packages: {set(book) & set(runtime)}"
    # ... and the build imports nothing from them: the book's Sphinx extensions import Sphinx and pybtex only.
    for path in sorted((ROOT / "book" / "_ext").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert not imported & {"mmgpt", *runtime}, f"{path.name} imports {imported & {'mmgpt', *runtime}}"
    config = (ROOT / "_config.yml").read_text(encoding="utf-8")
    assert yaml.safe_load(config).get("execute", {}).get("execute_notebooks") == "off", \
        "the book must render the stored outputs, not execute the chapters"


@pytest.mark.parametrize("name", ["sphinx", "myst-nb", "jupyter-book", "sphinxcontrib-bibtex"])
def test_the_book_extra_bounds_the_sphinx_stack_this_environment_builds_with(name):
    """book/_ext/mmgpt_book.py rebuilds Sphinx 7.4's script objects and hooks myst-nb 1's widget
    scripts; pyproject.toml bounds them, and the build the tests run is inside those bounds."""
    book = requirement_map(requirements.extra("book", PYPROJECT))
    assert name in book and book[name].specifier, f"the book extra does not bound {name}"
    assert any(s.operator == "<" for s in book[name].specifier), f"{name} needs an upper bound: {book[name]}"
    assert book[name].specifier.contains(md.version(name)), \
        f"installed {name} {md.version(name)} is outside {book[name]}"


def test_jupyterlab_is_an_extra_the_readme_installs():
    lab = requirement_map(requirements.extra("lab", PYPROJECT))
    assert "jupyterlab" in lab and "ipywidgets" in lab
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"pip install [^\n`]*", readme)
    assert any("lab" in c for c in commands), f"README's pip commands do not install JupyterLab: {commands}"


def test_every_tool_is_used():
    """tools/ holds what the Makefile, the tests, the README or another tool uses: named by its
    path, imported, or loaded as a pytest plugin (`-p name`)."""
    users = [ROOT / "Makefile", ROOT / "README.md", *sorted((ROOT / "tests").glob("*.py")),
             *sorted((ROOT / "tools").glob("*.py"))]
    for tool in sorted((ROOT / "tools").glob("*.py")):
        used = re.compile(rf"tools/{tool.stem}\.py|tools\" / \"{tool.stem}\.py\"|^import {tool.stem}\b|"
                          rf"\"-p\", \"{tool.stem}\"", re.M)
        mentions = [p.name for p in users if p != tool and used.search(p.read_text(encoding="utf-8"))]
        assert mentions, f"tools/{tool.name} is used by nothing (Makefile, README, tests, tools): remove it"


def test_make_test_runs_every_stage_and_the_package_stage_leaves_the_end_to_end_ones_out():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    stages = re.search(r"^STAGES\s*:=\s*(.+)$", makefile, re.M).group(1).split()
    assert stages == ["lint", "test-package", "test-notebooks", "test-fresh-env", "test-browser"]
    for stage in stages:
        assert re.search(rf"^{stage}:", makefile, re.M), f"no Makefile rule for {stage}"
    e2e = re.search(r"^E2E_TESTS\s*:=\s*(.+)$", makefile, re.M).group(1).split()
    assert sorted(e2e) == ["tests/test_browser.py", "tests/test_fresh_env.py"]
    tests = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    assert {pathlib.Path(p).name for p in e2e} <= tests
