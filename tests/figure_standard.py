"""The figure standard a machine can check, for every figure vizcnn writes: call
:func:`check_standard` on a drawn Figure (tests/test_figures.py does for every figure
type; a test of another figure calls it the same way: ``from figure_standard import
check_standard``). It fails on a figure wider than 12 inches, one without a title, an
unexplained all-constant image panel, any text that runs off the canvas or touches its
edge (a clipped or flush title), and tick or axis labels drawn over each other."""
from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import AxesImage
from matplotlib.text import Text

from vizcnn.render import common

#: Pixels every text keeps from the canvas edge (at the figure's dpi): a title that touches
#: the edge reads as cut off even when no glyph is.
EDGE_MARGIN = 2


def _undrawn_ticks(fig) -> set[int]:
    """Tick labels matplotlib keeps but does not draw (their tick lies outside the view)."""
    skip = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * max(1.0, abs(hi - lo))
            for ticks, locs in ((axis.get_major_ticks(), axis.get_majorticklocs()),
                                (axis.get_minor_ticks(), axis.get_minorticklocs())):
                for tick, loc in zip(ticks, locs):
                    if not lo - eps <= loc <= hi + eps:
                        skip.update((id(tick.label1), id(tick.label2)))
    return skip


def _texts(fig) -> list[Text]:
    """Every text drawn (non-empty, visible, and not a tick label outside its axis's view)."""
    skip = _undrawn_ticks(fig)
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in skip]


def check_standard(fig, *, tick_overlap: bool = True) -> None:
    """The parts of the standard a machine can check."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    width, _ = fig.get_size_inches()
    assert width <= common.MAX_WIDTH + 1e-6, f"{width} in wide"
    titles = [fig._suptitle] + [t for ax in fig.axes for t in (ax.title, ax._left_title, ax._right_title)]
    titles += [t for t in fig.texts]
    assert any(t is not None and t.get_text().strip() for t in titles), "no title"
    # a panel that shows one flat colour is allowed only where the figure says why
    said = " ".join(t.get_text() for t in _texts(fig))
    explained = any(word in said for word in ("zero", "constant", "dead (0)", "wins at every position"))
    for im in fig.findobj(AxesImage):
        a = np.ma.masked_invalid(np.asarray(im.get_array(), dtype=float))
        assert explained or a.count() == 0 or float(a.max() - a.min()) > 0, "an all-constant image panel, unexplained"
    page, m = fig.bbox, EDGE_MARGIN
    for t in _texts(fig):
        box = t.get_window_extent(renderer)
        assert page.x0 + m <= box.x0 and box.x1 <= page.x1 - m and page.y0 + m <= box.y0 and box.y1 <= page.y1 - m, \
            f"text {t.get_text()!r} runs off the canvas or touches its edge: {box} not {m} px inside {page}"
    if tick_overlap:
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                drawn = {id(t) for t in _texts(fig)}
                labels = [t for t in axis.get_ticklabels() if id(t) in drawn]
                boxes = [t.get_window_extent(renderer) for t in labels]
                for i in range(len(boxes) - 1):
                    assert not boxes[i].overlaps(boxes[i + 1]), \
                        f"tick labels {labels[i].get_text()!r} and {labels[i + 1].get_text()!r} overlap"
            label_boxes = [t.get_window_extent(renderer) for t in (ax.xaxis.label, ax.yaxis.label)
                           if t.get_visible() and t.get_text()]
            if len(label_boxes) == 2:
                assert not label_boxes[0].overlaps(label_boxes[1]), "axis labels overlap"
