"""Small helpers for reading the book: show the package's real code, draw the pipeline map.

Nothing here is part of the model; it keeps the chapters short and their pictures consistent.
"""
from __future__ import annotations

import inspect

__all__ = ["show_source", "png_bytes", "stack", "PIPELINE", "pipeline_diagram"]


def show_source(obj, start: str | None = None):
    """Display the source of a package function, class or module as highlighted Python.

    The chapters call this instead of pasting the package's code, so what the reader sees is
    always the code that runs. ``start`` keeps only the part from the first line containing it.
    Returns an ``IPython.display.Markdown`` object (a fenced code block), which renders in
    Jupyter, Colab and the book alike.
    """
    from IPython.display import Markdown

    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as err:
        raise TypeError(f"show_source: cannot find the source of {obj!r} ({err})") from None
    if start is not None:
        index = source.find(start)
        if index < 0:
            raise ValueError(f"show_source: {start!r} does not occur in the source of {obj!r}")
        source = source[source.rfind("\n", 0, index) + 1:]
    module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
    header = f"# from {module}\n" if module.startswith("mmgpt") else ""
    return Markdown(f"```python\n{header}{source.rstrip()}\n```")


def stack(pages, selected_index: int = 0):
    """A widget that shows one of ``pages`` at a time (a slider links to ``selected_index``).

    ``ipywidgets.Stack`` exists from ipywidgets 8; Colab keeps ipywidgets 7.7 for its own
    widget display, so there a ``Tab`` (the same pages, with a row of tabs above them) takes
    its place. Both have ``children`` and ``selected_index``, and both render in the book.
    """
    import ipywidgets as widgets

    kind = getattr(widgets, "Stack", None) or widgets.Tab
    return kind(list(pages), selected_index=selected_index)


def png_bytes(image, scale: int = 1, optimize: bool = True) -> bytes:
    """An image as PNG bytes, for ``ipywidgets.Image`` (widgets render in the static book).

    ``image`` is a tensor or array in [0, 1]: ``(H, W)`` (grey), ``(3, H, W)`` (a tensor,
    channels first, as the book's data gives them) or ``(H, W, 3)`` (an array). ``scale``
    enlarges it with crisp pixels (nearest neighbour).
    """
    import io

    import numpy as np
    from PIL import Image

    pixels = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[0] in (1, 3) and pixels.shape[-1] not in (1, 3):
        pixels = pixels.transpose(1, 2, 0)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3):
        raise ValueError(f"png_bytes: image must be (H, W), (3, H, W) or (H, W, 3), got "
                         f"shape {tuple(pixels.shape)}")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"png_bytes: scale must be a positive int, got {scale!r}")
    picture = Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale),
                                 Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="png", optimize=optimize)
    return buffer.getvalue()


# The book's map: (label, chapters, key). Every chapter highlights its own stage.
PIPELINE = (
    ("image", "", "image"),
    ("convolution\n& pooling", "01-02", "cnn"),
    ("patches &\npositions", "03", "patches"),
    ("tokens &\nembeddings", "04", "tokens"),
    ("attention\n(multi-head)", "05-06", "attention"),
    ("decoder", "07", "decoder"),
    ("fusion", "08", "fusion"),
    ("text out\n(loss, training)", "09-11", "text"),
)


def pipeline_diagram(highlight: str | None = None, ax=None):
    """Draw image -> features -> tokens -> attention -> text as a row of boxes.

    ``highlight`` is a stage key (``"cnn"``, ``"patches"``, ``"tokens"``, ``"attention"``,
    ``"decoder"``, ``"fusion"``, ``"text"``) drawn in colour; the others stay grey.
    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    keys = [key for _, _, key in PIPELINE]
    if highlight is not None and highlight not in keys:
        raise ValueError(f"pipeline_diagram: highlight must be one of {keys}, got {highlight!r}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 1.5))
    else:
        fig = ax.figure
    width, gap = 1.3, 0.3
    for i, (label, chapters, key) in enumerate(PIPELINE):
        x = i * (width + gap)
        on = key == highlight
        face = "#f4a261" if on else ("#dbe9f6" if key in ("image", "text") else "#eeeeee")
        ax.add_patch(FancyBboxPatch((x, 0), width, 1, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor=face, edgecolor="#333333", linewidth=2 if on else 1))
        ax.text(x + width / 2, 0.58, label, ha="center", va="center", fontsize=8,
                fontweight="bold" if on else "normal")
        if chapters:
            ax.text(x + width / 2, 0.13, f"ch. {chapters}", ha="center", va="center", fontsize=7, color="#555555")
        if i:
            ax.add_patch(FancyArrowPatch((x - gap + 0.03, 0.5), (x - 0.03, 0.5), arrowstyle="-|>",
                                         mutation_scale=10, color="#555555"))
    ax.set_xlim(-0.05, len(PIPELINE) * (width + gap) - gap + 0.05)
    ax.set_ylim(-0.08, 1.08)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig
