"""Open every page of the built book in headless Chromium and report what a reader would see broken.

    python tools/check_book.py [HTML_DIR] [--allow-network] [--chromium PATH] [--json OUT.json]

    make book-offline && python tools/check_book.py _build/offline/_build/html

HTML_DIR defaults to the offline book, ``_build/offline/_build/html``. The folder is served
over HTTP on a free port of 127.0.0.1, and Debian's ``chromium`` (or $CHROMIUM, or
``--chromium``) opens each page through Playwright (``pip install playwright``; it drives the
system's Chromium through ``executable_path``, so Playwright's own browser download is never
needed). Every host name but localhost is made unresolvable, so a page that needs the
internet (a CDN's MathJax or widget manager) fails here the way it would on a train.
``--allow-network`` lifts that, to check the normal (CDN) book from ``make book``.

Each page is checked for:

* JavaScript: no console error (failed loads included; not the 404 of the ``/favicon.ico`` that
  Chromium asks for by itself) and no uncaught exception;
* requests: none to another host, none failed, none answered with an HTTP error;
* images: every ``<img>`` loaded (``naturalWidth > 0``), lazy ones included;
* math: every Sphinx math element (``.math``) was typeset by MathJax (holds an
  ``mjx-container``), MathJax reported no TeX error (``mjx-merror``), and no raw TeX
  (``$...$``, ``$$``, ``\\(``, ``\\[``) is left in the text outside code;
* widgets: every saved widget view (``<script type="application/vnd.jupyter.widget-view+json">``)
  was rendered by the ipywidgets html-manager, none as its error box, and a page whose
  notebook saved widget state has at least one;
* links: every link into the book (same origin) names a file that exists, and its
  ``#anchor`` an element of that page;
* launch buttons: a notebook page has a Colab button, and every Colab link on it is
  ``https://colab.research.google.com/github/OWNER/REPO/blob/BRANCH/<the page's .ipynb>``
  (repository and branch from ``_config.yml``).

Pages are every ``*.html`` file of the build (``_static/``, ``_sources/`` and ``_images/``
aside); a page that only redirects (``index.html``) has its target checked instead of being
opened. Exit status 0 when nothing is wrong, 1 with the problems listed per page.
``tests/test_browser.py`` builds the offline book and runs this check in the test suite.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import html.parser
import http.server
import json
import os
import pathlib
import posixpath
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_HTML = ROOT / "_build" / "offline" / "_build" / "html"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "Install Debian's Chromium (`apt-get install -y chromium`), or name a Chromium binary in "
    "$CHROMIUM; the Python driver is Playwright (`pip install playwright`, in the test extras; "
    "it needs no browser download)."
)
# Resolve no host name but localhost: a page needing the internet visibly fails.
OFFLINE_RULE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SKIPPED_DIRS = ("_static", "_sources", "_images", "_downloads")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
COLAB = "https://colab.research.google.com/"
PAGE_TIMEOUT_MS = 30_000  # loading a page
WIDGETS_TIMEOUT_MS = 15_000  # rendering its saved widgets
MAX_SHOWN = 8  # problems of one kind listed per page before "and N more"


# --------------------------------------------------------------------------- the book's facts


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium binary: ``explicit``, else $CHROMIUM, else the first of CANDIDATES on PATH."""
    names = [explicit] if explicit else [os.environ.get("CHROMIUM", ""), *CANDIDATES]
    for name in names:
        if name and (path := shutil.which(name)):
            return path
    return None


def book_config(root: pathlib.Path = ROOT) -> dict:
    return yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}


def toc_docnames(root: pathlib.Path = ROOT) -> list[str]:
    """The pages _toc.yml lists (root first), as Sphinx docnames like ``notebooks/01_convolution``."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8")) or {}
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [posixpath.splitext(name)[0] for name in names]


def colab_url(docname: str, config: dict) -> str:
    """The Colab link a notebook page must carry, from _config.yml's repository."""
    repo = config["repository"]
    owner_repo = urlsplit(repo["url"].rstrip("/")).path.strip("/").removesuffix(".git")
    branch = repo.get("branch", "main")
    path_to_book = (repo.get("path_to_book") or "").strip("/")
    path = f"{path_to_book}/{docname}.ipynb" if path_to_book else f"{docname}.ipynb"
    return f"{COLAB}github/{owner_repo}/blob/{branch}/{path}"


def saved_widget_views(notebook: pathlib.Path) -> int:
    """How many widget views a notebook's outputs show from saved state (0 if it saved none)."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state")
    if not state:
        return 0
    views = 0
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data and data[WIDGET_VIEW].get("model_id") in state:
                views += 1
    return views


def book_pages(html_dir: pathlib.Path) -> list[str]:
    """Every HTML page of a build, as paths relative to it (``notebooks/01_convolution.html``)."""
    pages = []
    for path in sorted(html_dir.rglob("*.html")):
        rel = path.relative_to(html_dir).as_posix()
        if rel.split("/", 1)[0] not in SKIPPED_DIRS:
            pages.append(rel)
    return pages


def redirect_target(path: pathlib.Path) -> str | None:
    """The URL of a ``<meta http-equiv="refresh">`` page (Jupyter Book's index.html), else None."""
    head = path.read_text(encoding="utf-8", errors="replace")[:4000]
    match = re.search(r"""<meta\s+http-equiv=["']refresh["']\s+content=["']\d+;\s*url=([^"']+)["']""", head, re.I)
    return match.group(1).strip() if match else None


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name == "id" or (name == "name" and tag == "a")):
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def static_ids(path: pathlib.Path) -> frozenset[str]:
    """Element ids in an HTML file as written (for pages the browser did not open)."""
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


# --------------------------------------------------------------------------- serving


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(directory: pathlib.Path):
    """Serve ``directory`` on a free port of 127.0.0.1 in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="check_book-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------- in the page

# Waits until every saved widget view was replaced by rendered widget DOM (html-manager inserts a
# div.widget-subarea before each view script and renders the widget into it).
WIDGETS_RENDERED_JS = """() => {
    const views = document.querySelectorAll('script[type="%s"]');
    if (!document.querySelector('script[src*="html-manager"]')) return true;  // nothing will render them
    return Array.from(views).every(s => {
        const area = s.previousElementSibling;
        return area && area.classList.contains('widget-subarea') && area.querySelector('.jupyter-widgets');
    });
}""" % WIDGET_VIEW

# Loads lazy images now and waits (a bounded time) for every image to settle.
IMAGES_SETTLED_JS = """async (timeoutMs) => {
    const images = Array.from(document.images);
    for (const img of images) { if (img.loading === 'lazy') img.loading = 'eager'; }
    const settle = img => img.complete ? null : new Promise(done => {
        img.addEventListener('load', done, {once: true});
        img.addEventListener('error', done, {once: true});
    });
    await Promise.race([
        Promise.all(images.map(settle)),
        new Promise(done => setTimeout(done, timeoutMs)),
    ]);
}"""

MATHJAX_DONE_JS = """async (timeoutMs) => {
    const mj = window.MathJax;
    if (!(mj && mj.startup && mj.startup.promise)) return mj ? 'configured, not loaded' : 'absent';
    const late = new Promise(done => setTimeout(() => done('still typesetting after ' + timeoutMs + ' ms'), timeoutMs));
    return await Promise.race([mj.startup.promise.then(() => 'typeset', e => 'failed: ' + e), late]);
}"""

# Everything the checks need, read from the page after its scripts ran.
SURVEY_JS = r"""() => {
    const short = s => (s || '').replace(/\s+/g, ' ').trim().slice(0, 80);
    const images = Array.from(document.images).map(img => ({
        src: img.getAttribute('src') || '', alt: short(img.alt),
        complete: img.complete, naturalWidth: img.naturalWidth,
    }));
    const mathElements = Array.from(document.querySelectorAll('.math'));
    const untypeset = mathElements.filter(el => !el.querySelector('mjx-container')).map(el => short(el.textContent));
    const mathErrors = Array.from(document.querySelectorAll('mjx-merror')).map(el =>
        short(el.getAttribute('data-mjx-error') || el.textContent));
    // Raw TeX left in the text a reader sees (code, scripts and typeset math aside).
    const skip = new Set(['SCRIPT', 'STYLE', 'PRE', 'CODE', 'TEXTAREA', 'KBD', 'SAMP',
                          'MJX-CONTAINER', 'MJX-ASSISTIVE-MML', 'NOSCRIPT']);
    const rawTex = [];
    const tex = /\\\(|\\\[|\$\$|(^|[^\\\w$])\$[^\s$][^$\n]*?[^\s$\\]\$(?![\w$])|(^|[^\\\w$])\$[^\s$]\$(?![\w$])/;
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
        acceptNode(node) {
            for (let el = node.parentElement; el; el = el.parentElement) {
                const classes = el.classList;
                if (skip.has(el.tagName) || classes.contains('highlight') || classes.contains('output')) {
                    return NodeFilter.FILTER_REJECT;
                }
            }
            return NodeFilter.FILTER_ACCEPT;
        },
    });
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const m = node.textContent.match(tex);
        if (m) rawTex.push(short(node.textContent.slice(Math.max(0, m.index - 20), m.index + 40)));
    }
    const views = Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'));
    const rendered = views.filter(s => {
        const area = s.previousElementSibling;
        return area && area.classList.contains('widget-subarea') && area.querySelector('.jupyter-widgets');
    });
    // html-manager shows a widget it could not build as an error box ("Click to show javascript error").
    const widgetErrors = Array.from(document.querySelectorAll('.jupyter-widgets-error-widget'))
        .map(el => short(el.textContent));
    const widgetKinds = new Set();
    document.querySelectorAll('.jupyter-widgets [class*="widget-"], .jupyter-widgets[class*="widget-"]').forEach(el =>
        el.classList.forEach(c => { if (c.startsWith('widget-')) widgetKinds.add(c); }));
    const links = Array.from(document.querySelectorAll('a[href]')).map(a => ({
        href: a.href, raw: a.getAttribute('href'),
        text: short(a.textContent || a.title || a.getAttribute('aria-label')),
    }));
    const ids = Array.from(document.querySelectorAll('[id], a[name]')).map(el => el.id || el.getAttribute('name'));
    return {
        title: document.title, images, mathCount: mathElements.length, untypeset, mathErrors, rawTex,
        mjxContainers: document.querySelectorAll('mjx-container').length,
        widgetViews: views.length, widgetsRendered: rendered.length, widgetErrors,
        widgetKinds: Array.from(widgetKinds).sort(),
        links, ids,
    };
}"""


# --------------------------------------------------------------------------- the check


@dataclass
class PageResult:
    page: str  # relative to the build, e.g. notebooks/01_convolution.html
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    facts: dict = field(default_factory=dict)  # counts shown in the summary (math, widgets, images, links)

    def add(self, kind: str, items: list[str]) -> None:
        for item in items[:MAX_SHOWN]:
            self.problems.append(f"{kind}: {item}")
        if len(items) > MAX_SHOWN:
            self.problems.append(f"{kind}: ... and {len(items) - MAX_SHOWN} more")


@dataclass
class BookReport:
    html_dir: pathlib.Path
    browser: str
    pages: dict[str, PageResult]
    seconds: float

    @property
    def problems(self) -> dict[str, list[str]]:
        return {page: r.problems for page, r in self.pages.items() if r.problems}

    def summary(self) -> str:
        lines = [f"check_book: {len(self.pages)} pages of {self.html_dir} in {self.browser}, {self.seconds:.1f} s"]
        for page, result in self.pages.items():
            facts = ", ".join(f"{k} {v}" for k, v in result.facts.items())
            status = "ok" if not result.problems else f"{len(result.problems)} problem(s)"
            lines.append(f"  {page}: {status} ({result.seconds:.1f} s; {facts})")
            lines += [f"      - {p}" for p in result.problems]
        return "\n".join(lines)


def _doc_for(page: str, docnames: set[str]) -> str | None:
    docname = page.removesuffix(".html")
    return docname if docname in docnames else None


def _source_of(docname: str, root: pathlib.Path) -> pathlib.Path | None:
    for suffix in (".ipynb", ".md", ".rst"):
        if (root / f"{docname}{suffix}").is_file():
            return root / f"{docname}{suffix}"
    return None


def check_book(
    html_dir: pathlib.Path | str = DEFAULT_HTML,
    *,
    root: pathlib.Path = ROOT,
    chromium: str | None = None,
    offline: bool = True,
    pages: list[str] | None = None,
    log=None,
) -> BookReport:
    """Open every page of the build in one headless Chromium; returns what each page got wrong.

    Raises RuntimeError when Chromium or Playwright is missing (with how to install them).
    """
    html_dir = pathlib.Path(html_dir).resolve()
    if not (html_dir / "index.html").is_file() and not pages:
        raise RuntimeError(f"{html_dir} holds no built book (no index.html); build it with `make book-offline`")
    binary = find_chromium(chromium)
    if binary is None:
        raise RuntimeError(f"Chromium was not found. {INSTALL_HINT}")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError(f"Playwright's Python package is missing. {INSTALL_HINT}") from None

    config = book_config(root)
    docnames = set(toc_docnames(root))
    pages = list(pages) if pages else book_pages(html_dir)
    results = {page: PageResult(page) for page in pages}
    ids_seen: dict[str, frozenset[str]] = {}  # page -> element ids in its DOM after scripts ran
    links_seen: dict[str, list[dict]] = {}
    start = time.perf_counter()

    with serve(html_dir) as base, sync_playwright() as pw:
        args = [*CHROMIUM_ARGS, *([OFFLINE_RULE] if offline else [])]
        browser = pw.chromium.launch(executable_path=binary, args=args, headless=True)
        browser_name = f"Chromium {browser.version} ({binary}), Playwright"
        origin = base.rstrip("/")
        try:
            for page_rel in pages:
                result = results[page_rel]
                t0 = time.perf_counter()
                target = redirect_target(html_dir / page_rel)
                if target is not None:  # a redirect page: check where it points, do not open it
                    href = urljoin(base + page_rel, target)
                    links_seen[page_rel] = [{"href": href, "raw": target, "text": "redirect"}]
                    result.facts = {"redirects to": target}
                    continue
                context = browser.new_context(viewport={"width": 1280, "height": 1600}, service_workers="block")
                try:
                    survey = _visit(context, base + page_rel, origin, result, PlaywrightError, offline)
                finally:
                    context.close()
                result.seconds = time.perf_counter() - t0
                if survey is None:
                    continue
                ids_seen[page_rel] = frozenset(survey["ids"])
                links_seen[page_rel] = survey["links"]
                docname = _doc_for(page_rel, docnames)
                _check_survey(result, survey, docname, root, config)
                if log:
                    log(f"{page_rel}: {len(result.problems)} problem(s), {result.seconds:.1f} s")
        finally:
            browser.close()

    for page_rel, links in links_seen.items():
        results[page_rel].add("broken link", _broken_links(links, base_url=base, html_dir=html_dir, ids_seen=ids_seen))
        results[page_rel].facts.setdefault("links", len(links))
    return BookReport(html_dir, browser_name, results, time.perf_counter() - start)


def _visit(context, url: str, origin: str, result: PageResult, PlaywrightError, offline: bool) -> dict | None:
    """Load one page, wait for MathJax, widgets and images, and read the page's survey."""
    favicon = origin + "/favicon.ico"
    console_errors: list[str] = []
    page_errors: list[str] = []
    foreign: list[str] = []
    failed: list[str] = []
    http_errors: list[str] = []

    def on_console(msg):
        if msg.type == "error":
            where = msg.location.get("url", "") if isinstance(msg.location, dict) else ""
            if where == favicon:
                return  # Chromium asks for /favicon.ico by itself; the book names no icon
            console_errors.append(f"{msg.text}" + (f" [{where.removeprefix(origin)}]" if where else ""))

    def on_request(request):
        if not request.url.startswith((origin + "/", "data:", "blob:", "about:")):
            foreign.append(request.url)

    def on_failed(request):
        failed.append(f"{request.url.removeprefix(origin)} ({request.failure})")

    def on_response(response):
        if response.status >= 400 and response.url != favicon:
            http_errors.append(f"{response.url.removeprefix(origin)} (HTTP {response.status})")

    page = context.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda error: page_errors.append(str(error).splitlines()[0] if str(error) else repr(error)))
    page.on("request", on_request)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    survey = None
    try:
        page.goto(url, wait_until="load", timeout=PAGE_TIMEOUT_MS)
        mathjax = page.evaluate(MATHJAX_DONE_JS, WIDGETS_TIMEOUT_MS)
        try:
            page.wait_for_function(WIDGETS_RENDERED_JS, timeout=WIDGETS_TIMEOUT_MS, polling=100)
        except PlaywrightError:
            pass  # reported from the survey, with counts
        page.evaluate(IMAGES_SETTLED_JS, 10_000)
        page.wait_for_timeout(200)  # late console messages (a widget's fonts, a failed lazy load)
        survey = page.evaluate(SURVEY_JS)
        survey["mathjax"] = mathjax
    except PlaywrightError as error:
        result.add("browser", [f"could not load and survey the page: {str(error).splitlines()[0]}"])
    finally:
        page.close()
    result.add("JavaScript console error", console_errors)
    result.add("uncaught JavaScript exception", page_errors)
    if offline:
        result.add("request to another host (the book must work offline)", sorted(set(foreign)))
    result.add("failed request", failed)
    result.add("HTTP error", http_errors)
    return survey


def _check_survey(result: PageResult, survey: dict, docname: str | None, root: pathlib.Path, config: dict) -> None:
    images = survey["images"]
    broken = [f"<img src={i['src']!r} alt={i['alt']!r}> (complete={i['complete']}, naturalWidth={i['naturalWidth']})"
              for i in images if not i["complete"] or i["naturalWidth"] == 0]
    result.add("image did not load", broken)

    if survey["mathCount"]:
        if survey["mathjax"] != "typeset":
            result.add("math", [f"{survey['mathCount']} math elements but MathJax is {survey['mathjax']}"])
        result.add("math not typeset", survey["untypeset"])
    result.add("MathJax error", survey["mathErrors"])
    result.add("raw TeX left in the text", survey["rawTex"])

    views, rendered = survey["widgetViews"], survey["widgetsRendered"]
    if views != rendered:
        result.add("widgets", [f"{rendered} of {views} saved widget views rendered"])
    result.add("widget shown as an error", survey["widgetErrors"])
    source = _source_of(docname, root) if docname else None
    if source is not None and source.suffix == ".ipynb":
        saved = saved_widget_views(source)
        if saved and not views:
            result.add("widgets", [f"{source.name} saved {saved} widget view(s), the page shows none"])
        expected = colab_url(docname, config)
        colab = sorted({link["href"] for link in survey["links"] if link["href"].startswith(COLAB)})
        if not colab:
            result.add("launch button", [f"no Colab link; expected {expected}"])
        result.add("launch button", [f"Colab link {href} should be {expected}" for href in colab if href != expected])
        result.facts["colab"] = "ok" if colab == [expected] else "wrong"
    result.facts.update({
        "images": len(images),
        "math": f"{survey['mjxContainers']}/{survey['mathCount']}" if survey["mathCount"] else 0,
        "widgets": f"{rendered}/{views} {' '.join(survey['widgetKinds'][:6])}".strip() if views else 0,
    })


def _broken_links(links: list[dict], *, base_url: str, html_dir: pathlib.Path,
                  ids_seen: dict[str, frozenset[str]]) -> list[str]:
    """The links into the book (same origin) whose file or #anchor does not exist."""
    base = urlsplit(base_url)
    broken = []
    for link in links:
        href = link["href"]
        parts = urlsplit(href)
        if parts.scheme not in ("http", "https") or parts.netloc != base.netloc:
            continue  # another site, mailto:, javascript:
        path = unquote(parts.path).lstrip("/")
        if path == "" or path.endswith("/"):
            path += "index.html"
        file = html_dir / path
        label = f"{link['raw']!r} ({link['text']!r})" if link["text"] else repr(link["raw"])
        if not file.resolve().is_relative_to(html_dir) or not file.is_file():
            broken.append(f"{label}: no file {path}")
            continue
        fragment = unquote(parts.fragment)
        if fragment and file.suffix == ".html":
            ids = ids_seen.get(path)
            if ids is None:
                ids = static_ids(file)
            if fragment not in ids:
                broken.append(f"{label}: {path} has no element with id {fragment!r}")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html_dir", nargs="?", type=pathlib.Path, default=DEFAULT_HTML)
    parser.add_argument("--allow-network", action="store_true", help="let pages reach other hosts (the CDN book)")
    parser.add_argument("--chromium", help="the Chromium binary (default: $CHROMIUM, else chromium on PATH)")
    parser.add_argument("--page", action="append", help="check only this page (relative to HTML_DIR); repeatable")
    parser.add_argument("--json", type=pathlib.Path, metavar="OUT.json", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        report = check_book(args.html_dir, chromium=args.chromium, offline=not args.allow_network, pages=args.page)
    except RuntimeError as error:
        print(f"check_book.py: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps({p: {"problems": r.problems, "seconds": round(r.seconds, 2), "facts": r.facts}
                                         for p, r in report.pages.items()}, indent=1) + "\n", encoding="utf-8")
    problems = report.problems
    print(f"check_book: {sum(map(len, problems.values()))} problem(s) on {len(problems)} of {len(report.pages)} pages")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
