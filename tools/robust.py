"""Run nbval over the chapters as if on other machines, and report what survives.

    python tools/robust.py                       # every setting, every chapter
    python tools/robust.py -s seed1 -s avx2 notebooks/07_transformer_decoder.ipynb
    python tools/robust.py --jobs 2              # two settings at a time (timings then run slower)
    python tools/robust.py --report              # print the matrix of the last runs again

A chapter's checked outputs (the ones nbval compares) must be the same on every machine. Another
machine differs from this one in the last bits of floating-point results, which a training run
amplifies into other weights; these settings imitate that, each in a fresh kernel:

=========  ===================================================================================
quiet      nothing changed: the reference run and its cell times
seedK      every ``torch.manual_seed(s)`` seeds ``s + K`` (other initial weights, other
           dropout; the data stays the same), K = 1, 2, 3, ...
threads2   torch runs two intra-op threads even where a chapter asks for one
avx2       ATen, MKL and oneDNN use their AVX2 kernels instead of AVX-512 (another CPU's
           rounding)
busy       the quiet run while one CPU-bound process per core runs beside it: cell times on a
           machine about twice as slow
=========  ===================================================================================

Each run writes ``_build/robust/<setting>.jsonl``: one line per cell with its outcome, duration and
printed text (ignored cells too: the values an ``assert`` margin is chosen from). The report is a
matrix of chapters by settings, "passed/cells", and the slowest cell of the quiet and busy runs.
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
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "_build" / "robust"
NBVAL = ["--nbval", "--nbval-current-env", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg",
         "--nbval-cell-timeout", "600", "-o", "xfail_strict=true", "-p", "no:cacheprovider",
         "-p", "robust_record", "-q"]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "DNNL_MAX_CPU_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def settings(seeds: int) -> dict[str, dict[str, str]]:
    table = {"quiet": {}}
    table.update({f"seed{k}": {"MMGPT_ROBUST_SEED_OFFSET": str(k)} for k in range(1, seeds + 1)})
    table["threads2"] = {"MMGPT_ROBUST_THREADS": "2"}
    table["avx2"] = dict(AVX2)
    table["busy"] = {}
    return table


def run_setting(name: str, env_extra: dict[str, str], notebooks: list[str]) -> subprocess.Popen:
    OUT.mkdir(parents=True, exist_ok=True)
    record = OUT / f"{name}.jsonl"
    record.unlink(missing_ok=True)
    # sitecustomize runs first in every Python process that has this PYTHONPATH: the kernel,
    # and the processes a chapter starts itself (Chapter 13's torchrun runs) inherit it.
    site = pathlib.Path(tempfile.mkdtemp(prefix=f"robust-{name}-"))
    shutil.copy(ROOT / "tools" / "robust_startup.py", site / "sitecustomize.py")
    path = [str(site), str(ROOT / "tools"), os.environ.get("PYTHONPATH")]
    env = dict(os.environ, MMGPT_ROBUST_RECORD=str(record),
               PYTHONPATH=os.pathsep.join(filter(None, path)), **env_extra)
    log = open(OUT / f"{name}.log", "w", encoding="utf-8")
    return subprocess.Popen([sys.executable, "-m", "pytest", *NBVAL, *notebooks], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def hogs() -> list[subprocess.Popen]:
    """One busy process per core, each stopping by itself after an hour at the latest."""
    spin = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]


def load(name: str) -> list[dict]:
    path = OUT / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def report(names: list[str]) -> str:
    runs = {name: load(name) for name in names}
    runs = {name: records for name, records in runs.items() if records}
    chapters = sorted({r["notebook"] for records in runs.values() for r in records})
    header = ["chapter", *runs]
    for timed in ("quiet", "busy"):
        if timed in runs:
            header.append(f"slowest cell, {timed}")
    rows = []
    for chapter in chapters:
        row = [chapter]
        for name, records in runs.items():
            cells = [r for r in records if r["notebook"] == chapter]
            passed = sum(r["outcome"] == "passed" for r in cells)
            skipped = sum(r["outcome"] == "skipped" for r in cells)
            row.append(f"{passed}/{len(cells) - skipped}" if cells else "-")
        for timed in ("quiet", "busy"):
            if timed in runs:
                cells = [r for r in runs[timed] if r["notebook"] == chapter]
                slowest = max(cells, key=lambda r: r["seconds"], default=None)
                row.append(f"{slowest['seconds']:.0f} s ({slowest['cell']})" if slowest else "-")
        rows.append(row)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = [" | ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    failures = [f"{name}: {r['notebook']} {r['cell']}" for name, records in runs.items()
                for r in records if r["outcome"] == "failed"]
    if failures:
        lines += ["", "failed cells:", *("  " + f for f in failures)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="chapters to run (default: all)")
    parser.add_argument("-s", "--setting", action="append", help="a setting to run (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="how many seed settings (default 3)")
    parser.add_argument("--jobs", type=int, default=1, help="settings run at the same time (not 'busy')")
    parser.add_argument("--report", action="store_true", help="only print the report of earlier runs")
    parser.add_argument("--out", help="folder for the records (default _build/robust)")
    args = parser.parse_args(argv)
    if args.out:
        global OUT
        OUT = pathlib.Path(args.out).resolve()
    table = settings(args.seeds)
    chosen = args.setting or list(table)
    unknown = [name for name in chosen if name not in table and not name.startswith("seed")]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from {list(table)}")
    for name in chosen:
        if name not in table:  # seedK beyond --seeds
            table[name] = {"MMGPT_ROBUST_SEED_OFFSET": str(int(name[4:]))}
    if args.report:
        print(report(chosen))
        return 0
    notebooks = args.notebooks or sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb"))
    status = 0
    # threads2 runs alone: forcing two threads while another run shares the two cores measures
    # oversubscription (a 10x slowdown), not another machine's rounding.
    queue = [[name] for name in chosen if name == "threads2"]
    rest = [name for name in chosen if name not in ("busy", "threads2")]
    queue += [rest[i:i + args.jobs] for i in range(0, len(rest), args.jobs)]
    for batch in queue:
        start = time.perf_counter()
        procs = {name: run_setting(name, table[name], notebooks) for name in batch}
        for name, proc in procs.items():
            status |= proc.wait() != 0
            print(f"{name}: exit {proc.returncode} after {time.perf_counter() - start:.0f} s", flush=True)
    if "busy" in chosen:
        start = time.perf_counter()
        spinners = hogs()
        try:
            proc = run_setting("busy", table["busy"], notebooks)
            status |= proc.wait() != 0
        finally:
            for spinner in spinners:
                spinner.kill()
        print(f"busy: exit {proc.returncode} after {time.perf_counter() - start:.0f} s", flush=True)
    text = report(chosen)
    (OUT / "report.txt").write_text(text + "\n", encoding="utf-8")
    print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
