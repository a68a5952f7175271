"""Fetch the JavaScript the offline book serves locally: MathJax 3 and the ipywidgets html-manager.

    python tools/offline_assets.py fetch [--force]

By default the book loads MathJax and the widget manager (require.js + embed-amd.js) from
public CDNs. `make book-offline` builds it with local copies instead, so the pages render
with no network: this script downloads them from the npm registry (`npm pack`, nothing else
on the internet is needed) into the git-ignored folder ``.book-offline-assets/``, and the
book's Sphinx extension (``book/_ext/mmgpt_book.py``, on when ``MMGPT_BOOK_OFFLINE=1``)
adds that folder to ``html_static_path``. The files are never committed.

The folder mirrors the layout of the jsDelivr npm CDN, so each file keeps the URL path it
has there, below ``_static/offline/npm/`` in the built book::

    .book-offline-assets/
        .manifest.json                                    what was fetched (read by the extension)
        offline/npm/requirejs@2.3.8/require.js
        offline/npm/@jupyter-widgets/html-manager@1.0.6/dist/embed-amd.js  (+ the rest of dist/, no .map)
        offline/npm/mathjax@3.2.2/es5/tex-mml-chtml.js                   (+ components, CHTML fonts)

Running it again does nothing while the folder is complete and matches the versions below;
change a version here and the next run replaces the whole folder. Standard library only
(plus the ``npm`` command).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

# The pinned versions: the single place to change them.
#   requirejs: any 2.3.x; myst-nb's default loads 2.3.4 from cdnjs.
#   @jupyter-widgets/html-manager: the version myst-nb's default `nb_ipywidgets_js` loads
#     (myst_nb/core/config.py, ipywidgets_js_factory); 1.0.x renders ipywidgets 8 state.
#   mathjax: Sphinx's default `mathjax_path` is mathjax@3 (es5/tex-mml-chtml.js).
VERSIONS = {
    "requirejs": "2.3.8",
    "@jupyter-widgets/html-manager": "1.0.6",
    "mathjax": "3.2.2",
}

ROOT = pathlib.Path(__file__).resolve().parents[1]
ASSETS = ROOT / ".book-offline-assets"
MANIFEST = ASSETS / ".manifest.json"  # a dot file: Sphinx does not copy it into _static/
STATIC_SUBDIR = "offline/npm"  # below ASSETS, and below _static/ in the built book
FORMAT = 1  # bump when the layout of ASSETS changes

# What to keep from each package tarball ("package/..." paths, fnmatch patterns; "*" crosses "/").
# LICENSE and package.json travel with the code they describe.
KEEP = {
    "requirejs": ["require.js", "LICENSE*", "package.json"],
    "@jupyter-widgets/html-manager": ["dist/*", "LICENSE*", "package.json"],
    "mathjax": ["es5/*", "LICENSE*", "package.json"],
}
DROP = {
    "requirejs": [],
    "@jupyter-widgets/html-manager": ["*.map"],
    # The book uses CommonHTML output: drop the SVG output and its combined components,
    # node-only code, and latest.js (which loads the newest MathJax from a CDN).
    "mathjax": [
        "*.map",
        "es5/output/svg.js",
        "es5/output/svg/*",
        "es5/*-svg.js",
        "es5/*-svg-*.js",
        "es5/node-main.js",
        "es5/latest.js",
    ],
}
# Files the book loads directly; fetch checks they arrived, the extension points at them.
ENTRY_POINTS = {
    "require_js": ("requirejs", "require.js"),
    "embed_amd_js": ("@jupyter-widgets/html-manager", "dist/embed-amd.js"),
    "mathjax_dir": ("mathjax", "es5"),
    "mathjax_js": ("mathjax", "es5/tex-mml-chtml.js"),
    "mathjax_font": ("mathjax", "es5/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff"),
}


class FetchError(RuntimeError):
    pass


def package_dir(name: str) -> str:
    """The folder of a package below STATIC_SUBDIR, as on jsDelivr: ``name@version``."""
    return f"{name}@{VERSIONS[name]}"


def entry_point_paths() -> dict[str, str]:
    """Entry points as paths relative to ASSETS (and to ``_static/`` in the built book)."""
    return {key: f"{STATIC_SUBDIR}/{package_dir(name)}/{rel}" for key, (name, rel) in ENTRY_POINTS.items()}


def _matches(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def is_complete() -> bool:
    """True when ASSETS holds exactly the pinned versions and every file listed in the manifest."""
    try:
        manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("format") != FORMAT or manifest.get("versions") != VERSIONS:
        return False
    for rel, size in manifest.get("files", {}).items():
        path = ASSETS / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return all((ASSETS / rel).exists() for rel in manifest.get("entry_points", {}).values())


def npm_pack(spec: str, dest: pathlib.Path) -> dict:
    """Download one package tarball with ``npm pack``; returns npm's JSON record for it."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(
            "`npm` was not found on PATH. Install Node.js/npm (e.g. `apt-get install npm`) and "
            "run `python tools/offline_assets.py fetch` again."
        )
    cmd = [npm, "pack", spec, "--json", "--pack-destination", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise FetchError(f"`npm pack {spec}` did not finish within 10 minutes; "
                         "is the npm registry reachable?") from None
    if proc.returncode != 0:
        detail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-15:])
        raise FetchError(
            f"`npm pack {spec}` failed (exit status {proc.returncode}). Check that the npm registry "
            f"is reachable (`npm ping`, proxy and registry settings in ~/.npmrc) and that the "
            f"version exists (`npm view {spec} version`).\nnpm said:\n{detail}"
        )
    try:
        records = json.loads(proc.stdout)
        record = records[0]
        tarball = dest / record["filename"]
    except (ValueError, LookupError, TypeError):
        raise FetchError(f"`npm pack {spec}` printed unexpected output:\n{proc.stdout[-2000:]}") from None
    if not tarball.is_file():
        raise FetchError(f"`npm pack {spec}` reported {tarball.name}, but that file is not in {dest}.")
    return record


def unpack(name: str, tarball: pathlib.Path, target: pathlib.Path) -> dict[str, int]:
    """Copy the kept members of ``package/`` from the tarball into target; returns {rel path: size}."""
    written: dict[str, int] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue  # npm tarballs hold regular files only; skip links and anything odd
            parts = pathlib.PurePosixPath(member.name).parts
            if len(parts) < 2 or parts[0] != "package" or ".." in parts or member.name.startswith("/"):
                continue
            rel = "/".join(parts[1:])
            if not _matches(rel, KEEP[name]) or _matches(rel, DROP[name]):
                continue
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            if src is None:
                continue
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            written[rel] = member.size
    if not written:
        raise FetchError(f"{tarball.name} held none of the expected files ({KEEP[name]}).")
    return written


def fetch(force: bool = False) -> int:
    if not force and is_complete():
        print(f"offline assets: up to date in {ASSETS.relative_to(ROOT)}/ ({_describe()})")
        return 0
    ASSETS.parent.mkdir(parents=True, exist_ok=True)
    # Build in a staging folder next to ASSETS, then swap it in: an interrupted run never
    # leaves a half-filled folder that looks complete.
    with tempfile.TemporaryDirectory(prefix=".book-offline-assets.", dir=ASSETS.parent) as tmp:
        tmp_path = pathlib.Path(tmp)
        downloads = tmp_path / "npm-pack"
        staging = tmp_path / "assets"
        downloads.mkdir()
        staging.mkdir()
        files: dict[str, int] = {}
        packages = {}
        for name, version in VERSIONS.items():
            spec = f"{name}@{version}"
            print(f"offline assets: npm pack {spec}", flush=True)
            record = npm_pack(spec, downloads)
            if record.get("version") not in (None, version):
                raise FetchError(f"npm pack {spec} returned version {record.get('version')}")
            prefix = f"{STATIC_SUBDIR}/{package_dir(name)}"
            for rel, size in unpack(name, downloads / record["filename"], staging / prefix).items():
                files[f"{prefix}/{rel}"] = size
            packages[name] = {"version": version, "integrity": record.get("integrity")}
        entry_points = entry_point_paths()
        missing = [rel for rel in entry_points.values() if not (staging / rel).exists()]
        if missing:
            raise FetchError("the downloaded packages lack files the book needs: " + ", ".join(missing))
        manifest = {
            "format": FORMAT,
            "versions": VERSIONS,
            "packages": packages,
            "static_subdir": STATIC_SUBDIR,
            "entry_points": entry_points,
            "files": dict(sorted(files.items())),
        }
        (staging / MANIFEST.name).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        old = tmp_path / "old"
        if ASSETS.exists():
            ASSETS.rename(old)
        staging.rename(ASSETS)
    print(f"offline assets: fetched into {ASSETS.relative_to(ROOT)}/ ({_describe()})")
    return 0


def _describe() -> str:
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    versions = ", ".join(f"{n}@{v}" for n, v in VERSIONS.items())
    return f"{versions}; {total / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch",
                             help="download the pinned packages into .book-offline-assets/ (skipped when complete)")
    p_fetch.add_argument("--force", action="store_true", help="download again even if the folder is complete")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            return fetch(force=args.force)
    except FetchError as error:
        print(f"offline_assets.py: error: {error}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
