"""Screenshot a page of the built book with headless Chromium.

    python tools/screenshot.py URL OUT.png [--offline] [--dump-dom OUT.html] [--net-log OUT.json]

    python -m http.server -d _build/offline/_build/html 8000 &
    python tools/screenshot.py http://localhost:8000/notebooks/01_convolution.html /tmp/ch01.png --offline

Runs ``chromium --headless`` with a fresh profile (nothing comes from a cache) and a
10 s virtual-time budget, so MathJax and the widget manager finish before the picture is
taken. ``--offline`` makes every host name except localhost unresolvable
(``--host-resolver-rules``), so anything the page needs from the internet visibly fails;
``--net-log`` records every request Chromium made (a JSON net-log) and prints the hosts
it contacted; ``--dump-dom`` saves the DOM after the scripts ran (a second run), to check
e.g. for MathJax's ``mjx-container`` elements and the widgets' ``widget-slider`` classes.
Standard library only; needs ``chromium`` (``apt-get install chromium``) or ``--chromium PATH``.
To check every page of a build at once (JavaScript errors, images, math, widgets, links, launch
buttons), use ``tools/check_book.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit

BASE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
OFFLINE_RULE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(explicit: str | None) -> str:
    for name in ([explicit] if explicit else [os.environ.get("CHROMIUM", ""), *CANDIDATES]):
        if name and (path := shutil.which(name)):
            return path
    raise SystemExit("screenshot.py: Chromium not found; install it (`apt-get install chromium`) or pass --chromium PATH")


def run_chromium(binary: str, flags: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="screenshot-profile.") as profile:
        cmd = [binary, *BASE_FLAGS, f"--user-data-dir={profile}", *flags, url]
        print("+", " ".join(cmd), file=sys.stderr)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def requests_in_net_log(path: pathlib.Path) -> dict[str, dict[str, int]]:
    """Count the requests started in a Chromium net-log, by scheme://host, split into those the
    page made (the navigation, and loads whose initiator is an origin) and the browser's own
    background requests (initiator "not an origin": update checks, account look-ups)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        log = json.loads(text)
    except ValueError:  # Chromium may leave the closing brackets off if killed
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start_job = log.get("constants", {}).get("logEventTypes", {}).get("URL_REQUEST_START_JOB")
    counts: dict[str, dict[str, int]] = {"page": {}, "browser": {}}
    for event in log.get("events", []):
        params = event.get("params") or {}
        url = params.get("url")
        if event.get("type") != start_job or not isinstance(url, str):
            continue
        from_page = params.get("request_type") in ("main frame", "sub frame") or params.get("initiator", "not an origin") != "not an origin"
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"
        bucket = counts["page" if from_page else "browser"]
        bucket[origin] = bucket.get(origin, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("out", type=pathlib.Path, help="the PNG to write")
    parser.add_argument("--offline", action="store_true", help="resolve no host name but localhost")
    parser.add_argument("--window-size", default="1200,1600")
    parser.add_argument("--budget-ms", type=int, default=10000, help="virtual time budget (default 10000)")
    parser.add_argument("--dump-dom", type=pathlib.Path, metavar="OUT.html", help="also save the DOM after scripts ran")
    parser.add_argument("--net-log", type=pathlib.Path, metavar="OUT.json", help="record the requests made while screenshotting")
    parser.add_argument("--chromium", help="the Chromium binary (default: chromium on PATH, or $CHROMIUM)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before giving up on Chromium")
    args = parser.parse_args(argv)

    binary = find_chromium(args.chromium)
    flags = [f"--window-size={args.window_size}", f"--virtual-time-budget={args.budget_ms}"]
    if args.offline:
        flags.append(OFFLINE_RULE)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot_flags = [*flags, f"--screenshot={args.out.resolve()}"]
    if args.net_log:
        args.net_log.parent.mkdir(parents=True, exist_ok=True)
        shot_flags += [f"--log-net-log={args.net_log.resolve()}", "--net-log-capture-mode=Default"]
    proc = run_chromium(binary, shot_flags, args.url, args.timeout)
    if proc.returncode != 0 or not args.out.is_file():
        sys.stderr.write(proc.stderr[-4000:])
        print(f"screenshot.py: Chromium failed (exit status {proc.returncode}); no {args.out}", file=sys.stderr)
        return 1
    print(f"screenshot: {args.out}")

    if args.net_log:
        counts = requests_in_net_log(args.net_log)
        print(f"net-log: {args.net_log}")
        for kind, title in (("page", "requests made by the page"), ("browser", "the browser's own background requests")):
            print(f"  {title}:" + ("" if counts[kind] else " none"))
            for origin, n in sorted(counts[kind].items()):
                print(f"    {n:5d}  {origin}")

    if args.dump_dom:
        proc = run_chromium(binary, [*flags, "--dump-dom"], args.url, args.timeout)
        if proc.returncode != 0 or not proc.stdout:
            sys.stderr.write(proc.stderr[-4000:])
            print(f"screenshot.py: Chromium --dump-dom failed (exit status {proc.returncode})", file=sys.stderr)
            return 1
        args.dump_dom.parent.mkdir(parents=True, exist_ok=True)
        args.dump_dom.write_text(proc.stdout, encoding="utf-8")
        print(f"dom: {args.dump_dom}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
