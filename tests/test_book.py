"""The book's plumbing: table of contents, chapter hygiene, the shared set-up cell, nbval strictness."""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import nbformat
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import notebooks as nbtools  # noqa: E402

# Every notebook is tested alike: the numbered chapters and pages such as project_practice.
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]
    for part in toc.get("parts", []):
        assert part.get("caption"), f"every part of _toc.yml needs a caption: {part}"
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def test_toc_lists_only_what_exists_and_every_chapter():
    files = toc_files()
    for name in files:
        matches = [p for p in (ROOT / f"{name}.md", ROOT / f"{name}.ipynb") if p.exists()]
        assert len(matches) == 1, f"_toc.yml lists {name!r}, which must exist as exactly one .md or .ipynb"
    listed = {name for name in files if name.startswith("notebooks/")}
    on_disk = {f"notebooks/{p.stem}" for p in CHAPTERS}
    assert on_disk == listed, \
        f"chapters missing from _toc.yml: {on_disk - listed}; listed but absent: {listed - on_disk}"
    assert len(files) == len(set(files)), "a page is listed twice in _toc.yml"


def test_there_is_at_least_one_chapter():
    assert CHAPTERS, "no chapter notebooks found in notebooks/"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_starts_with_the_shared_setup_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), \
        f"{path.name}: the first cell must be a markdown cell with the chapter's title"
    cell = nbtools.first_code_cell(nb)
    assert cell.source == nbtools.setup_source(), \
        f"{path.name}: the first code cell differs from the shared set-up cell; run `make setup-cells`"
    assert cell.metadata.get("tags") == nbtools.SETUP_TAGS
    assert nbtools.repository_url() in cell.source


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_clean_executed_and_light(path):
    assert path.stat().st_size < 3_000_000, f"{path.name} is over 3 MB: use smaller figures"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert None not in counts, f"{path.name}: some cells were never executed (run `make execute`)"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: not executed top to bottom in a fresh kernel"
    for index, cell in enumerate(code):
        tags = cell.metadata.get("tags", [])
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors or "raises-exception" in tags, f"{path.name}: code cell {index} stores an error"
        assert "raises-exception" not in tags or errors, \
            f"{path.name}: code cell {index} is tagged raises-exception but raised nothing"
        text = json.dumps(cell.outputs)
        assert not re.search(r"/(work|root|home|tmp|Users)/[\w.-]+/", text), \
            f"{path.name}: cell {index} shows a machine path"
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                assert "Warning" not in output.text, f"{path.name}: cell {index} stores a warning: {output.text[:200]}"
        if cell.source.lstrip().startswith("# @title Solution"):
            assert "hide-cell" in tags, \
                f"{path.name}: solution cell {index} must be tagged hide-cell (hides code and answer)"
    uses_widgets = any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for c in code for o in c.outputs)
    if uses_widgets:
        state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
        assert state.get("state"), f"{path.name}: widgets without saved state render as nothing in the book"


def test_repository_url_lives_in_one_place():
    """_config.yml names the repository; the set-up cells are generated from it, and every other
    mention (README, book pages, package metadata) must agree with it."""
    url = nbtools.repository_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "environment.yml",
             *sorted((ROOT / "book").glob("*.md"))]
    for path in files:
        for found in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", path.read_text(encoding="utf-8")):
            if "mmgpt" in found.lower():
                assert found.removesuffix(".git") == url, f"{path.name} names {found}, but _config.yml says {url}"


def _nbval_options() -> list[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    line = re.search(r"^NBVAL_OPTS\s*:=\s*(.+)$", makefile, re.M).group(1)
    return line.split()


def test_nbval_fails_when_a_checked_number_changes(tmp_path):
    """The test command's nbval options are strict: a changed number in an output fails."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import math\nprint(f'pi is about {math.pi:.4f}')"),
        nbformat.v4.new_code_cell("object()"),  # a memory address: sanitized, must still pass
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    good = tmp_path / "good.ipynb"
    nbformat.write(nb, good)
    bad_nb = nbformat.read(good, as_version=4)
    bad_nb.cells[0].outputs[0].text = bad_nb.cells[0].outputs[0].text.replace("3.1416", "3.1417")
    bad = tmp_path / "bad.ipynb"
    nbformat.write(bad_nb, bad)

    options = [o if o != "tests/nbval_sanitize.cfg" else str(ROOT / o) for o in _nbval_options()]

    def nbval(path):
        return subprocess.run([sys.executable, "-m", "pytest", *options, str(path), "-q"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    passed, failed = nbval(good), nbval(bad)
    assert passed.returncode == 0, passed.stdout[-2000:]
    assert failed.returncode != 0 and "3.1417" in failed.stdout, failed.stdout[-2000:]


def test_png_bytes_round_trips_pixels_and_refuses_bad_shapes():
    import io

    import numpy as np
    import torch
    from PIL import Image

    from mmgpt.book import png_bytes

    rgb = torch.rand(3, 5, 7)
    back = np.asarray(Image.open(io.BytesIO(png_bytes(rgb, scale=2))))
    assert back.shape == (10, 14, 3)
    expected = (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(back[::2, ::2], expected)
    grey = np.asarray(Image.open(io.BytesIO(png_bytes(torch.rand(4, 6)))))
    assert grey.shape == (4, 6)
    with pytest.raises(ValueError, match="png_bytes: image must be"):
        png_bytes(torch.rand(2, 4, 5, 6))
    with pytest.raises(ValueError, match="scale must be a positive int"):
        png_bytes(rgb, scale=0)


# Readers need at most "your numbers will differ slightly"; why a cell is not compared belongs in
# the cell's metadata (cell.metadata["mmgpt"]["why"]) and the contributor docs, not in the text.
# Each phrase below names the test machinery; none is ordinary prose about models ("the scores are
# compared with the question", "one thread is fastest for a model this small" stay allowed).
TEST_TALK = re.compile(
    r"\bnbval\b|\bpytest\b|\btest[- ]suite\b|\bthe book's\s+tests\b|\bunit tests?\b"
    r"|\b(?:the|our|these|its|package|notebook|chapter)\s+tests\b|\bregression[- ]test"
    r"|\b(?:not|never|isn't|aren't)\s+compared\b"
    r"|\bcells?(?:'s?)?\s+(?:printed\s+)?outputs?\s+(?:is|are)\s+(?:not\s+)?compared\b"
    r"|\b(?:stored|printed|saved)\s+outputs?\s+(?:is|are)\s+(?:not\s+)?compared\b"
    r"|\bcompares?\s+(?:the\s+|its\s+)?(?:stored|printed|saved)\s+outputs?\b"
    r"|\bchecked\s+(?:cells?|outputs?)\b|\bstored\s+outputs?\b"
    r"|\bshared\s+(?:machines?|runners?|CPUs?|cores|computers?)\b|\bthread\s+counts?\b"
    r"|\bcontinuous\s+integration\b|\bmake\s+test\b|(?-i:\bCI\b)",
    re.I)


def code_comments(source: str) -> str:
    """The comments of a code cell (what a reader reads of it besides the code), one per line."""
    import io
    import tokenize
    # IPython magics and shell escapes are not Python: blank them out, keeping line numbers.
    python = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(python).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return "\n".join(line.strip() for line in source.split("\n") if line.lstrip().startswith("#"))
    return "\n".join(token.string for token in tokens if token.type == tokenize.COMMENT)


def reader_facing_texts():
    """(where, text): markdown cells, the comments of code cells, and the book's pages."""
    for path in CHAPTERS:
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "markdown":
                yield f"{path.name} cell {index}", cell.source
            elif cell.cell_type == "code":
                yield f"{path.name} cell {index} (comment)", code_comments(cell.source)
    for page in sorted((ROOT / "book").glob("*.md")):
        yield page.name, page.read_text(encoding="utf-8")


def test_test_talk_catches_the_machinery_and_spares_the_prose():
    for talk in ["nbval compares this cell", "the book's tests re-run it", "this output is not compared",
                 "the cell's output is compared on every run", "compares the printed output",
                 "checked cells", "the stored outputs", "one thread on shared machines",
                 "a fixed thread count keeps it the same", "run by CI",
                 "every claim is checked by the test suite", "make test re-runs it"]:
        assert TEST_TALK.search(talk), talk
    for prose in ["the query is compared with every key", "compared with one 5×5 layer",
                  "on one CPU thread: small operations spend their time coordinating threads",
                  "the outputs of the encoder", "two encoders, whose outputs are compared",
                  "a ci-devant model", "Your numbers will differ slightly", "the test set",
                  "held-out test accuracy", "The `assert` below checks the claim",
                  "re-execute the cell with another seed", "run the cell again"]:
        assert not TEST_TALK.search(prose), prose


def test_reader_facing_text_does_not_talk_about_the_test_machinery():
    found = [f"{where}: {match.group(0)!r}" for where, text in reader_facing_texts()
             for match in TEST_TALK.finditer(text)]
    assert not found, "reader-facing text talks about the tests: " + "; ".join(found)


def test_stack_falls_back_to_tabs_where_ipywidgets_has_no_stack(monkeypatch):
    """Colab keeps ipywidgets 7.7, which has no Stack: mmgpt.book.stack gives a Tab there,
    with the same pages and the page asked for, so every chapter's slider still works."""
    import ipywidgets

    from mmgpt.book import stack

    pages = [ipywidgets.Label("a"), ipywidgets.Label("b"), ipywidgets.Label("c")]
    assert type(stack(pages, selected_index=2)).__name__ == "Stack"
    monkeypatch.delattr(ipywidgets, "Stack")
    tabs = stack(pages, selected_index=2)
    assert isinstance(tabs, ipywidgets.Tab)
    assert list(tabs.children) == pages and tabs.selected_index == 2


def test_no_chapter_builds_an_ipywidgets_8_only_stack():
    """ipywidgets.Stack is missing on Colab (ipywidgets 7.7): chapters call mmgpt.book.stack."""
    offenders = [path.name for path in CHAPTERS if "widgets.Stack(" in path.read_text()]
    assert not offenders, f"use mmgpt.book.stack instead of widgets.Stack in {offenders}"
