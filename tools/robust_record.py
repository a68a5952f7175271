"""pytest plugin for `tools/robust.py`: write what each notebook cell printed, its outcome and
its duration to the JSON-lines file named by MMGPT_ROBUST_RECORD (one line per cell).

nbval keeps every cell's outputs on the test item (``item.test_outputs``), also for cells whose
output it does not compare, so one run gives both the verdict and the values behind it: the
numbers an ``assert`` margin must be chosen from.
"""
import json
import os

import pytest


def _texts(outputs):
    texts = []
    for out in outputs or []:
        if out.get("output_type") == "stream":
            texts.append(out.get("text", ""))
        elif "data" in out and "text/plain" in out["data"]:
            if "image/png" not in out["data"]:
                texts.append(out["data"]["text/plain"])
        elif out.get("output_type") == "error":
            texts.append(f"{out.get('ename')}: {out.get('evalue')}")
    return "".join(texts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    path = os.environ.get("MMGPT_ROBUST_RECORD")
    if not path or report.when != "call" or not hasattr(item, "test_outputs"):
        return
    cell = getattr(item, "cell", None)
    tags = cell.metadata.get("tags", []) if cell is not None else []
    outcome = report.outcome
    if getattr(report, "wasxfail", None) is not None or getattr(item.parent, "timed_out", False):
        outcome = "failed"  # this cell or one before it hit the cell timeout
    record = {
        "notebook": os.path.basename(str(item.fspath)),
        "cell": item.name,
        "outcome": outcome,
        "seconds": round(report.duration, 2),
        "checked": "nbval-ignore-output" not in tags,
        "output": _texts(item.test_outputs),
        "failure": str(report.longrepr)[-3000:] if report.failed else "",
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
