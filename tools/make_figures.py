"""Draw the book's static figures into book/images/.

    python tools/make_figures.py

The prose pages (book/*.md) cannot run code, so their figures are drawn here, from the same
package functions the chapters call, and committed as SVG. The output is deterministic: the
same code and matplotlib version write the same bytes, so re-running this script leaves git
clean unless a figure really changed.
"""
from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # no display needed

import matplotlib.pyplot as plt  # noqa: E402

from mmgpt.book import pipeline_diagram  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = ROOT / "book" / "images"

# Stable SVG: fixed ids for clip paths and glyphs, no creation date in the file.
matplotlib.rcParams["svg.hashsalt"] = "mmgpt"
matplotlib.rcParams["svg.fonttype"] = "path"  # text as paths: looks the same without the font
SAVE = {"format": "svg", "bbox_inches": "tight", "metadata": {"Date": None}}


def pipeline() -> pathlib.Path:
    """The book's map: image -> features -> tokens -> attention -> decoder -> text, nothing highlighted."""
    fig = pipeline_diagram(highlight=None)  # the package's own size, as in the chapters
    path = IMAGES / "pipeline.svg"
    fig.savefig(path, **SAVE)
    plt.close(fig)
    return path


FIGURES = [pipeline]


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for make in FIGURES:
        path = make()
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
