"""Sphinx extension for the mmgpt book (loaded through ``sphinx.local_extensions`` in _config.yml).

Offline mode. By default the book loads MathJax 3 (Sphinx's ``mathjax_path``) and the
ipywidgets html-manager that renders saved widget state (myst-nb's ``nb_ipywidgets_js``:
require.js + ``@jupyter-widgets/html-manager/dist/embed-amd.js``) from public CDNs. With the
environment variable ``MMGPT_BOOK_OFFLINE=1`` (``make book-offline``) this extension serves
them instead from the local copies that ``python tools/offline_assets.py fetch`` puts in the
git-ignored folder ``.book-offline-assets/``, so the built pages render with no network:

* ``.book-offline-assets/`` joins ``html_static_path`` (its ``offline/`` folder lands in ``_static/``);
* ``mathjax_path`` names the local MathJax component (the one the configured path names,
  ``tex-mml-chtml.js`` by default);
* ``nb_ipywidgets_js`` names the local require.js and embed-amd.js, without the CDN's
  ``integrity``/``crossorigin`` attributes (a local file has other bytes, and ``crossorigin``
  stops scripts loading from ``file://``), and with ``data-jupyter-widgets-cdn`` (where
  embed-amd.js looks for widget modules it does not bundle) pointing at the local mirror
  ``_static/offline/npm/``, made relative to each page, instead of jsDelivr;
* each page with widgets also tells require.js where embed-amd.js lives, so the widgets'
  Font Awesome fonts load (myst-nb's CDN default looks for them next to the page: 404s).

myst-nb reads ``nb_ipywidgets_js`` in ``builder-inited`` (``create_mystnb_config``) and
Sphinx reads ``mathjax_path`` per page, so setting them in ``config-inited`` is early enough.
Without the variable the offline part changes nothing. In both builds the extension also repairs
two script problems a browser reports (see ``fix_page_scripts``) and sets the theme's default mode.
"""
from __future__ import annotations

import json
import os
import pathlib
import posixpath
from urllib.parse import urlsplit

from sphinx.errors import ConfigError
from sphinx.util import logging

logger = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository root (book/_ext/ is two below)
ASSETS = ROOT / ".book-offline-assets"  # written by tools/offline_assets.py
MANIFEST = ASSETS / ".manifest.json"  # written last by the fetch
ENV_VAR = "MMGPT_BOOK_OFFLINE"
FETCH_HINT = "python tools/offline_assets.py fetch"
CDN_ATTRIBUTE = "data-jupyter-widgets-cdn"
DEFAULT_MATHJAX_COMPONENT = "tex-mml-chtml.js"  # what Sphinx's default mathjax_path loads


def offline_requested() -> bool:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{ENV_VAR}={value!r} is not understood: set {ENV_VAR}=1 for the offline book, or unset it.")


def load_manifest() -> dict:
    """The manifest of the fetched assets, after checking every file it lists is in place."""

    def not_fetched(why: str) -> str:
        return (
            f"{ENV_VAR}=1 builds the book with MathJax and the ipywidgets manager served locally, "
            f"from {ASSETS}, but {why}. Run `{FETCH_HINT}` first (or `make book-offline`, which does)."
        )

    try:
        manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
        entry_points = manifest["entry_points"]
        files = manifest["files"]
        static_subdir = manifest["static_subdir"]
    except FileNotFoundError:
        raise ConfigError(not_fetched("they have not been fetched")) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(not_fetched(f"its .manifest.json is unreadable ({error!r})")) from None
    missing = [rel for rel in [*entry_points.values(), *files] if not (ASSETS / rel).exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(not_fetched(f"files are missing there ({shown})"))
    manifest["static_subdir"] = static_subdir.strip("/")
    return manifest


def use_offline_assets(app, config) -> None:
    """config-inited: point MathJax and the widget manager at the local copies (offline mode only)."""
    if not offline_requested():
        return
    manifest = load_manifest()
    entry = manifest["entry_points"]
    static_subdir = manifest["static_subdir"]

    config.html_static_path = [*config.html_static_path, str(ASSETS)]

    component = posixpath.basename(urlsplit(config.mathjax_path or "").path) or DEFAULT_MATHJAX_COMPONENT
    mathjax_path = f"{entry['mathjax_dir']}/{component}"
    if not (ASSETS / mathjax_path).is_file():
        raise ConfigError(
            f"mathjax_path is {config.mathjax_path!r}, but the offline assets have no MathJax 3 "
            f"component {component!r} (looked for {ASSETS / mathjax_path}). Use a MathJax 3 "
            f"CommonHTML component such as {DEFAULT_MATHJAX_COMPONENT!r}."
        )
    config.mathjax_path = mathjax_path  # relative: Sphinx serves it from _static/

    embed_amd = entry["embed_amd_js"]
    config.nb_ipywidgets_js = {
        entry["require_js"]: {},
        # Rewritten per page by widgets_paths_per_page; this value is right for top-level pages.
        embed_amd: {CDN_ATTRIBUTE: f"_static/{static_subdir}/"},
    }
    app.connect("html-page-context", widgets_paths_per_page(embed_amd, f"_static/{static_subdir}/"), priority=900)
    versions = ", ".join(f"{name}@{v}" for name, v in manifest.get("versions", {}).items())
    logger.info(f"mmgpt_book: offline book: MathJax and ipywidgets served from _static/{static_subdir}/ ({versions})")


def widgets_paths_per_page(embed_amd: str, cdn_dir: str):
    """html-page-context handler making the widget manager's local paths relative to the page.

    * ``data-jupyter-widgets-cdn``: require.js resolves it against the page's folder, so
      ``notebooks/x.html`` needs ``../_static/offline/npm/``.
    * A ``requirejs.config`` just before embed-amd.js maps the two modules in it that carry CSS,
      ``@jupyter-widgets/html-manager`` and ``.../dist/libembed-amd``, into the local ``dist/``
      folder. They look for the Font Awesome fonts their CSS names next to their require.js
      module URL, which without the mapping is under the page's folder
      (``notebooks/@jupyter-widgets/...``: 404s, with the CDN default as well;
      ``window.__jupyter_widgets_assets_path__`` is applied too late for the CSS).

    myst-nb adds the scripts in its own html-page-context handler (priority 500); this one runs after.
    """
    dist_dir = posixpath.dirname(embed_amd)

    def handler(app, pagename, templatename, context, doctree) -> None:
        script_files = context.get("script_files")
        pathto = context.get("pathto")
        if not isinstance(script_files, list) or pathto is None:
            return
        for i, js in enumerate(script_files):
            attributes = getattr(js, "attributes", None)
            filename = getattr(js, "filename", None)  # add_js_file prefixes local paths with _static/
            if filename not in (embed_amd, f"_static/{embed_amd}") or not isinstance(attributes, dict):
                continue
            # Sphinx's script objects are immutable: put a copy with the page's path in its place.
            cdn = pathto(cdn_dir, resource=True)
            script_files[i] = type(js)(js.filename, priority=js.priority, **{**attributes, CDN_ATTRIBUTE: cdn})
            dist = pathto(f"_static/{dist_dir}", resource=True)
            paths = {"@jupyter-widgets/html-manager": f"{dist}/embed-amd", "@jupyter-widgets/html-manager/dist": dist}
            body = f"window.requirejs && requirejs.config({{paths: {json.dumps(paths)}}});"
            # Same priority, inserted before: the stable sort keeps it between require.js and embed-amd.js.
            script_files.insert(i, type(js)("", priority=js.priority, body=body))
            return

    return handler


# ipywidgets' html-manager (1.0.x) typesets widget text with MathJax 2's API whenever a global
# ``MathJax`` exists: ``MathJax.Hub.Queue(["Typeset", MathJax.Hub, el])``. The book loads MathJax 3,
# which has no ``Hub``, so every Label/HTML widget threw "Cannot read properties of undefined
# (reading 'Queue')". This shim, run once MathJax 3 (a deferred script) is in place and before the
# widgets render (on load, asynchronously), maps that call onto MathJax 3's typesetPromise.
MATHJAX2_SHIM = """document.addEventListener("DOMContentLoaded", function () {
  var mj = window.MathJax;
  if (!mj || mj.Hub || typeof mj.version !== "string" || mj.version.charAt(0) !== "3") return;
  mj.Hub = {Queue: function () {
    Array.prototype.forEach.call(arguments, function (job) {
      if (Array.isArray(job) && job[0] === "Typeset" && job[2]) {
        Promise.resolve(mj.startup && mj.startup.promise).then(function () {
          return mj.typesetPromise && mj.typesetPromise([job[2]]);
        });
      }
    });
  }};
});"""


def fix_page_scripts(app, pagename, templatename, context, doctree) -> None:
    """html-page-context: repair two script problems that showed as console errors in a browser.

    * Inline scripts added twice: sphinx-thebe adds its ``const THEBE_JS_URL = ...`` body with
      ``app.add_js_file(None, body=...)`` after the builder started; Sphinx 7.4 keeps it once with
      filename None and re-adds it from its registry with filename "", so each page carried it
      twice and the second copy threw "Identifier 'THEBE_JS_URL' has already been declared".
      Keep the first of identical scripts.
    * On pages with widgets and math, give html-manager the MathJax 2 call it makes (MATHJAX2_SHIM).
    """
    script_files = context.get("script_files")
    if not isinstance(script_files, list):
        return
    seen, unique = set(), []
    for js in script_files:
        # A body-only script may come as filename None (app.add_js_file) and again as "" (Sphinx
        # re-adding the registry's scripts): the same script.
        key = (getattr(js, "filename", None) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    script_files[:] = unique
    names = [str(getattr(js, "filename", "")) for js in script_files]
    widgets = [i for i, name in enumerate(names)
               if "html-manager" in name and name.rsplit("?", 1)[0].endswith("embed-amd.js")]
    if widgets:
        js = script_files[widgets[0]]
        script_files.insert(widgets[0], type(js)("", priority=js.priority, body=MATHJAX2_SHIM))


def setup(app):
    app.connect("config-inited", use_offline_assets)
    # Pydata's theme writes data-mode="{{ default_mode }}" and, left empty, logs "Got invalid theme
    # mode: . Resetting to auto." on a reader's first visit; "auto" follows the reader's system.
    app.connect("config-inited", lambda app, config: config.html_context.setdefault("default_mode", "auto"))
    app.connect("html-page-context", fix_page_scripts, priority=950)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
