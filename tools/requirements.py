"""What pyproject.toml asks for, in the forms other installers read.

    python tools/requirements.py extra book     # the book extra, one requirement a line (make book)
    python tools/requirements.py environment    # environment.yml, for conda and Binder

pyproject.toml is the one place that states mmgpt's dependencies. ``make book`` installs only
the ``book`` extra into its own environment (``.venv-book``: Jupyter Book, no torch, no mmgpt:
the build renders the outputs stored in the notebooks and imports nothing from the package), so
it reads that list from here. ``environment.yml`` is written from the same table;
``tests/test_packaging.py`` checks that the committed file is what this script writes.
Standard library only (plus pip's own TOML reader on Python < 3.11), so a bare venv can run it.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# conda-forge names where they differ from PyPI's.
CONDA_NAMES = {"torch": "pytorch"}
# What environment.yml installs with conda (the heavy, compiled part: runtime and JupyterLab);
# pip then adds mmgpt itself with the extras a Binder or conda user wants.
CONDA_EXTRAS = ("lab",)
PIP_EXTRAS = ("book", "test", "lab")


def load_pyproject(path: pathlib.Path = ROOT / "pyproject.toml") -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11: pip vendors the same parser
        from pip._vendor import tomli as tomllib
    return tomllib.loads(path.read_text(encoding="utf-8"))


def extra(name: str, project: dict | None = None) -> list[str]:
    project = (project or load_pyproject())["project"]
    extras = project.get("optional-dependencies", {})
    if name not in extras:
        raise SystemExit(f"pyproject.toml has no extra {name!r}; it has {sorted(extras)}")
    return list(extras[name])


def split(requirement: str) -> tuple[str, str]:
    """'numpy>=1.23  ' -> ('numpy', '>=1.23'); markers and extras are not used in this project."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*?)\s*", requirement)
    if match is None or any(c in requirement for c in ";[@"):
        raise SystemExit(f"tools/requirements.py cannot translate {requirement!r} for conda")
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def merge(specs: list[str]) -> str:
    """Several lower bounds on one package ('>=7.6', '>=8.0'): the highest; anything else, all of them."""
    parts = [p for spec in specs for p in spec.split(",") if p]
    lower = [p for p in parts if p.startswith(">=")]
    if lower and len(lower) == len(parts):
        def key(bound: str) -> tuple:
            return tuple(int(x) if x.isdigit() else 0 for x in bound[2:].split("."))
        return max(lower, key=key)
    return ",".join(dict.fromkeys(parts))


def environment(project: dict | None = None) -> str:
    data = project or load_pyproject()
    meta = data["project"]
    wanted: dict[str, list[str]] = {}
    for requirement in meta["dependencies"] + [r for name in CONDA_EXTRAS for r in extra(name, data)]:
        name, spec = split(requirement)
        wanted.setdefault(name, []).append(spec)
    for requirement in [r for name in PIP_EXTRAS for r in extra(name, data)]:
        name, spec = split(requirement)  # an extra's tighter bound (test: torch>=2.5) binds conda too
        if name in wanted:
            wanted[name].append(spec)
    lines = [
        "# Written by `python tools/requirements.py environment > environment.yml` from pyproject.toml",
        "# (edit that file, not this one; tests/test_packaging.py checks the two agree).",
        "# The book's environment for conda and Binder (Binder reads this file; the book's launch button",
        "# opens the chapters there): mmgpt's dependencies and JupyterLab from conda-forge (which picks the",
        "# CPU build of pytorch on machines without CUDA, as on Binder), then mmgpt itself with pip.",
        "name: mmgpt",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python{meta['requires-python'].replace(' ', '')}",
        "  - pip",
    ]
    lines += [f"  - {CONDA_NAMES.get(name, name)}{merge(specs)}" for name, specs in wanted.items()]
    lines += ["  - pip:", f"      - -e \".[{','.join(PIP_EXTRAS)}]\""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_extra = sub.add_parser("extra", help="print one extra's requirements, one a line")
    p_extra.add_argument("name")
    sub.add_parser("environment", help="print environment.yml")
    args = parser.parse_args(argv)
    if args.command == "extra":
        print("\n".join(extra(args.name)))
    else:
        sys.stdout.write(environment())
    return 0


if __name__ == "__main__":
    sys.exit(main())
