"""The book in a real browser: build the offline book, open every page in headless Chromium.

What a reader sees is checked by ``tools/check_book.py`` (read its docstring): no JavaScript
error, no request leaving localhost, every image loaded, all math typeset by MathJax with no raw
TeX left, every saved widget rendered, every internal link and anchor resolving, and each
chapter's Colab button opening its own notebook. The pages come from ``_toc.yml`` (plus the
pages Sphinx adds), so new chapters are checked as soon as they are listed.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and Playwright's Python package
(the test extras; it drives that Chromium, no browser download). Without Chromium these tests
FAIL and say so; ``MMGPT_SKIP_BROWSER=1`` skips them on purpose. The offline book is built into
a temporary folder (``tools/offline_assets.py fetch`` first, which needs ``npm`` once);
``MMGPT_BOOK_HTML=_build/offline/_build/html`` checks an existing build instead.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import check_book  # noqa: E402

SKIP_VAR = "MMGPT_SKIP_BROWSER"
BUILD_VAR = "MMGPT_BOOK_HTML"
SPHINX_PAGES = ["index.html", "genindex.html", "search.html"]  # pages the build adds to the toc's
TOC_PAGES = [f"{name}.html" for name in check_book.toc_docnames()]


def _book_options() -> list[str]:
    """The Makefile's jupyter-book options (-W -n --keep-going ...), so the test builds as `make book` does."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^BOOK_OPTS\s*:?=\s*(.+)$", makefile, re.M)
    return match.group(1).split() if match else ["-W", "-n", "--keep-going", "--builder", "html"]


@pytest.fixture(scope="module")
def chromium() -> str:
    if os.environ.get(SKIP_VAR, "") == "1":
        pytest.skip(f"{SKIP_VAR}=1: the book was not checked in a browser")
    path = check_book.find_chromium()
    if path is None:
        pytest.fail(f"Chromium was not found, so the book cannot be checked in a browser. {check_book.INSTALL_HINT} "
                    f"To skip these tests on purpose, set {SKIP_VAR}=1.", pytrace=False)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("Playwright's Python package is missing: `pip install -e '.[test]'` "
                    "(or `pip install playwright`). "
                    f"To skip these tests on purpose, set {SKIP_VAR}=1.", pytrace=False)
    return path


def _run(cmd: list[str], what: str, **kwargs) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f"{what} failed (exit status {proc.returncode}): {' '.join(cmd)}\n{output}", pytrace=False)


@pytest.fixture(scope="module")
def offline_book(chromium, tmp_path_factory) -> pathlib.Path:
    """The built offline book's HTML folder: $MMGPT_BOOK_HTML, or a fresh build in a temporary folder."""
    if os.environ.get(BUILD_VAR):
        html = pathlib.Path(os.environ[BUILD_VAR]).resolve()
        assert (html / "index.html").is_file(), f"{BUILD_VAR}={html} holds no built book (no index.html)"
        return html
    _run([sys.executable, str(ROOT / "tools" / "offline_assets.py"), "fetch"],
         "fetching the offline assets (needs npm)",
         timeout=900)
    out = tmp_path_factory.mktemp("offline-book")
    jupyter_book = pathlib.Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jupyter_book) if jupyter_book.exists() else "jupyter-book", "build", str(ROOT), *_book_options(),
           "--path-output", str(out)]
    _run(cmd, "building the offline book", env={**os.environ, "MMGPT_BOOK_OFFLINE": "1"}, timeout=900)
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def report(offline_book, chromium) -> check_book.BookReport:
    result = check_book.check_book(offline_book, chromium=chromium)
    print(result.summary())  # shown with -s, or -rA
    return result


def test_the_build_has_the_toc_pages_and_nothing_else(report):
    built = set(report.pages)
    expected = set(TOC_PAGES) | set(SPHINX_PAGES)
    assert built == expected, \
        f"built but not in _toc.yml: {sorted(built - expected)}; in _toc.yml but not built: {sorted(expected - built)}"


@pytest.mark.parametrize("page", TOC_PAGES + SPHINX_PAGES)
def test_page_works_in_the_browser(report, page):
    assert page in report.pages, f"{page} is not in the built book"
    result = report.pages[page]
    if result.problems:
        pytest.fail(f"{page} in {report.browser}:\n  " + "\n  ".join(result.problems), pytrace=False)


def test_every_chapter_page_was_checked_for_colab_math_and_widgets(report):
    """The page test only proves what it looked at: each chapter page must have been opened
    and its Colab button compared (a chapter with saved widgets shows rendered ones)."""
    for page in TOC_PAGES:
        if page.startswith("notebooks/"):
            facts = report.pages[page].facts
            assert facts.get("colab") == "ok", f"{page}: Colab button not checked or wrong ({facts})"
            notebook = ROOT / page.replace(".html", ".ipynb")
            if check_book.saved_widget_views(notebook):
                rendered = str(facts.get("widgets", "0")).split(" ")[0]
                assert rendered not in ("0", "0/0"), f"{page}: no widget rendered ({facts})"


# A tiny site with one of each defect, to prove the checks can fail (and a clean page, to prove
# they do not fail without cause).
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f8cfc0f01f0005000201e2a0e3f00000000049454e44ae426082"
)
BROKEN_PAGE = """<!doctype html><html><head><title>broken</title>
<script src="https://cdn.jsdelivr.net/npm/nothing@1/none.js"></script></head><body>
<p>An image: <img src="missing.png" alt="gone"> and a good one <img src="dot.png" alt="dot"></p>
<p>Raw math the reader should not see: $x^2$ and \\(y\\).</p>
<span class="math notranslate nohighlight">\\(z\\)</span>
<a href="../sub/clean.html#nowhere">bad anchor</a> <a href="gone.html">gone</a>
<a href="../sub/clean.html#here">good</a>
<a href="https://colab.research.google.com/github/someone/else/blob/main/notebooks/01_demo.ipynb">Colab</a>
<script type="application/vnd.jupyter.widget-view+json">
{"version_major": 2, "version_minor": 0, "model_id": "m"}</script>
<script>throw new Error("boom from the page");</script>
<script>console.error("logged by the page");</script>
</body></html>"""
CLEAN_PAGE = """<!doctype html><html><head><title>clean</title></head><body>
<h1 id="here">Clean</h1><p>Costs $5, not $ 6. <img src="../dot.png" alt="dot">
<a href="../notebooks/01_demo.html">back</a></p>
<pre>$not math$ in code</pre></body></html>"""


def test_the_checker_finds_each_kind_of_defect(chromium, tmp_path):
    root, html = tmp_path / "book", tmp_path / "book" / "_build" / "html"
    (html / "notebooks").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "_config.yml").write_text("repository:\n  url: https://github.com/owner/repo\n  branch: main\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: notebooks/01_demo\nchapters:\n  - file: sub/clean\n")
    (root / "notebooks" / "01_demo.ipynb").write_text(json.dumps({"cells": [], "metadata": {"widgets": {
        check_book.WIDGET_STATE: {"state": {"m": {}}}}}, "nbformat": 4, "nbformat_minor": 5}))
    (html / "notebooks" / "01_demo.html").write_text(BROKEN_PAGE)
    (html / "notebooks" / "dot.png").write_bytes(PNG_1X1)
    (html / "sub").mkdir()
    (html / "sub" / "clean.html").write_text(CLEAN_PAGE)
    (html / "dot.png").write_bytes(PNG_1X1)

    result = check_book.check_book(html, root=root, chromium=chromium,
                                   pages=["notebooks/01_demo.html", "sub/clean.html"])
    clean = result.pages["sub/clean.html"]
    assert not clean.problems, clean.problems
    problems = "\n".join(result.pages["notebooks/01_demo.html"].problems)
    expected = {
        "uncaught exception": "uncaught JavaScript exception: boom from the page",
        "console error": "JavaScript console error: logged by the page",
        "CDN request": "request to another host (the book must work offline): https://cdn.jsdelivr.net/npm/nothing@1/none.js",
        "missing image": "image did not load: <img src='missing.png'",
        "math left raw": "math not typeset: \\(z\\)",
        "raw TeX $": "raw TeX left in the text: ",
        "bad anchor": "'../sub/clean.html#nowhere' ('bad anchor'): sub/clean.html has no element with id 'nowhere'",
        "missing page": "'gone.html' ('gone'): no file notebooks/gone.html",
        "unrendered widget": "widgets: 0 of 1 saved widget views rendered",
        "wrong Colab link": "should be https://colab.research.google.com/github/owner/repo/blob/main/notebooks/01_demo.ipynb",
    }
    missing = {what: text for what, text in expected.items() if text not in problems}
    assert not missing, f"the checker missed: {missing}\nit reported:\n{problems}"
    assert "dot.png" not in problems and "#here" not in problems, problems
    assert "$x^2$" in problems and "\\(y\\)" in problems, problems
