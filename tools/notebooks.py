"""Authoring tools for the chapter notebooks.

    python tools/notebooks.py setup-cells      # write the shared set-up cell into every chapter
    python tools/notebooks.py execute [NB...]  # re-run chapters in place, saving outputs + widget state

The set-up cell is generated from one template, with the repository URL read from
``_config.yml`` (the one place that names it) and the release the chapters were executed with,
``mmgpt.__version__`` (the one place that names the version; its git tag is ``v`` + version).
In Colab the cell installs that tag, not whatever the default branch holds that day; a release
bumps the version, runs ``make setup-cells`` and tags the commit. ``tests/test_book.py`` checks
every chapter still carries the cell unchanged.
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import sys
import time

import nbformat
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

SETUP_TEMPLATE = '''\
# Set-up, the same in every chapter: install the mmgpt this book was made with if it
# is missing (e.g. in Colab), seed every random generator, pick the device.
import os
MMGPT = "git+{url}@{tag}"
try:
    import mmgpt
except ImportError:  # MMGPT_SOURCE may name a local checkout instead
    source = os.environ.get("MMGPT_SOURCE", MMGPT)
    %pip install --quiet {{source}}
    import mmgpt
device = mmgpt.setup(seed=0)'''

# Its output names the torch version and the device, which differ between machines.
SETUP_TAGS = ["nbval-ignore-output", "setup"]


def repository_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    return config["repository"]["url"].rstrip("/")


def package_version() -> str:
    """``mmgpt.__version__``, read from the source (importing mmgpt would import torch)."""
    tree = ast.parse((ROOT / "mmgpt" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError("mmgpt/__init__.py does not set __version__")


def release_tag() -> str:
    """The git tag of this version: what the chapters' set-up cell installs."""
    return f"v{package_version()}"


def setup_source() -> str:
    return SETUP_TEMPLATE.format(url=repository_url(), tag=release_tag())


def chapter_paths(names=()) -> list[pathlib.Path]:
    if names:
        return [pathlib.Path(n).resolve() for n in names]
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def first_code_cell(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            return cell
    return None


def write_setup_cells() -> None:
    source = setup_source()
    for path in chapter_paths():
        nb = nbformat.read(path, as_version=4)
        cell = first_code_cell(nb)
        if cell is None or "setup" not in cell.metadata.get("tags", []):
            cell = nbformat.v4.new_code_cell(source)
            nb.cells.insert(1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0, cell)
        cell.source = source
        cell.metadata["tags"] = list(SETUP_TAGS)
        nbformat.write(nb, path)
        print(f"set-up cell written: {path.relative_to(ROOT)}")


def scrub_machine_paths(nb) -> None:
    """Make paths in stored text outputs (tracebacks, printed text) repo-relative.

    Readers have other machines; images and widget data are left alone.
    """
    import re

    site = re.compile(r"/[^\s'\"]*?/(lib|Lib)/python[0-9.]*/site-packages/")

    def scrub(text: str) -> str:
        text = text.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
        return site.sub("<site-packages>/", text)

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                output.traceback = [scrub(line) for line in output.traceback]
                output.evalue = scrub(output.evalue)
            elif output.output_type == "stream":
                output.text = scrub(output.text)
            elif "text/plain" in output.get("data", {}):
                output.data["text/plain"] = scrub(output.data["text/plain"])


def execute(paths) -> None:
    from nbclient import NotebookClient

    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        client = NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=True,
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
        scrub_machine_paths(nb)
        nbformat.write(nb, path)
        print(f"executed {path.relative_to(ROOT)} in {time.perf_counter() - start:.1f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup-cells", help="write the shared set-up cell into every chapter")
    run = sub.add_parser("execute", help="re-run chapters in place (all by default)")
    run.add_argument("notebooks", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "setup-cells":
        write_setup_cells()
    else:
        execute(chapter_paths(args.notebooks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
