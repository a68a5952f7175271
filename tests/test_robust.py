"""tools/robust.py, the robustness runs of the chapters: its perturbations really perturb, and
its report says what the records say."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import robust  # noqa: E402

PROBE = """
import runpy, torch
runpy.run_path({startup!r})
torch.manual_seed(0)
first = torch.rand(3).tolist()
torch.set_num_threads(1)  # what a chapter asks for
import json
print(json.dumps({{"rand": first, "threads": torch.get_num_threads()}}))
"""


def probe(**env) -> dict:
    code = PROBE.format(startup=str(ROOT / "tools" / "robust_startup.py"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MMGPT_ROBUST_")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_startup_file_changes_the_seed_and_the_threads_and_nothing_else():
    quiet = probe()
    assert quiet["threads"] == 1
    seeded = probe(MMGPT_ROBUST_SEED_OFFSET="1")
    assert seeded["rand"] != quiet["rand"] and seeded["threads"] == 1
    import torch

    torch.manual_seed(1)  # seed 0 + offset 1, exactly
    assert seeded["rand"] == torch.rand(3).tolist()
    forced = probe(MMGPT_ROBUST_THREADS="2")
    assert forced["threads"] == 2 and forced["rand"] == quiet["rand"]


def test_every_setting_is_a_real_perturbation():
    table = robust.settings(seeds=3)
    assert list(table) == ["quiet", "seed1", "seed2", "seed3", "threads2", "avx2", "busy"]
    assert table["avx2"]["ATEN_CPU_CAPABILITY"] == "avx2"
    assert {table[f"seed{k}"]["MMGPT_ROBUST_SEED_OFFSET"] for k in (1, 2, 3)} == {"1", "2", "3"}


def test_the_report_counts_passes_per_chapter_and_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(robust, "OUT", tmp_path)
    records = {
        "quiet": [("a.ipynb", "Cell 0", "passed", 1.0), ("a.ipynb", "Cell 1", "passed", 42.0)],
        "seed1": [("a.ipynb", "Cell 0", "passed", 1.0), ("a.ipynb", "Cell 1", "failed", 40.0)],
    }
    for name, rows in records.items():
        with open(tmp_path / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for notebook, cell, outcome, seconds in rows:
                f.write(json.dumps({"notebook": notebook, "cell": cell, "outcome": outcome,
                                    "seconds": seconds}) + "\n")
    text = robust.report(["quiet", "seed1", "avx2"])
    row = next(line for line in text.splitlines() if line.startswith("a.ipynb"))
    assert [x.strip() for x in row.split("|")] == ["a.ipynb", "2/2", "1/2", "42 s (Cell 1)"]
    assert "seed1: a.ipynb Cell 1" in text
