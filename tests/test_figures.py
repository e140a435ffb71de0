"""The figure standard, checked on every figure type vizcnn draws: at most 12 inches wide,
a title, no all-constant image panel, every text inside the canvas and no two tick or
label texts over each other. Figures are drawn from seeded random tensors at a small
size; the compute (occlusion, invariance, spectra) runs on a tiny model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import AxesImage
from matplotlib.text import Text
from torch import nn

from vizcnn.methods.invariance import invariance_curves
from vizcnn.methods.occlusion import occlude
from vizcnn.methods.spectra import filter_spectra, summarize
from vizcnn.render import common, deconv, invariance
from vizcnn.render import dataset as render_dataset
from vizcnn.render import filters as render_filters
from vizcnn.render import occlusion as render_occlusion
from vizcnn.render import saliency as render_saliency

TITLE = "tiny (random weights) · layer conv2 · deconvnet · what is shown"


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU())
        self.classifier = nn.Linear(6 * 5 * 5, 5)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Tiny().eval()


def _image(size: int = 16) -> np.ndarray:
    return torch.rand(size, size, 3, generator=rng(1)).numpy()


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
    page = fig.bbox
    for t in _texts(fig):
        box = t.get_window_extent(renderer)
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, \
            f"text {t.get_text()!r} runs off the canvas: {box} not inside {page}"
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


def test_deconv_grid_marks_zero_projections():
    proj = torch.randn(5, 3, 16, 16, generator=rng())
    proj[2] = 0
    boxes = [(0, 8, 0, 8)] * 4 + [(4, 16, 2, 14)]
    labels = [f"ch {i} · activation 1.5\nreceptive field y 0–8, x 0–8 px" for i in range(5)]
    fig = deconv.deconv_grid(_image(), proj, boxes, labels, TITLE)
    check_standard(fig)
    assert any(t.get_text() == "zero\nprojection" for t in _texts(fig))


def test_deconv_grid_of_many_pairs_stays_12_inches():
    proj = torch.randn(12, 3, 16, 16, generator=rng())
    fig = deconv.deconv_grid(_image(), proj, [(0, 16, 0, 16)] * 12, [f"ch {i}" for i in range(12)], TITLE,
                             columns=6)
    check_standard(fig)


def _topk_rows(dead_unit: int | None = None):
    g = np.random.default_rng(0)
    rows = []
    for u in range(3):
        cells = []
        for r in range(9):
            value = 0.0 if u == dead_unit else float(g.random() + 0.1)
            proj = np.full((12, 12, 3), 0.5) if value == 0 else g.random((12, 12, 3))
            cells.append((proj, g.random((12, 12, 3)), value, f"image{r}"))
        rows.append((u, cells))
    return rows


def test_topk_page_marks_and_counts_dead_winners():
    fig = render_dataset.topk_page(_topk_rows(dead_unit=1), TITLE, cell=96)
    check_standard(fig, tick_overlap=False)
    texts = [t.get_text() for t in _texts(fig)]
    assert sum(t.startswith("dead (0) ·") for t in texts) == 9
    assert any("9 of 27 winners have activation 0" in t for t in texts)
    assert any("(dead)" in t for t in texts)  # the row label of the unit that never fires


def test_topk_page_says_when_projections_look_alike():
    rows = _topk_rows()
    same = np.random.default_rng(5).random((12, 12, 3))
    rows = [(u, [(same, c[1], c[2], c[3]) for c in cells]) for u, cells in rows]
    fig = render_dataset.topk_page(rows, TITLE)
    check_standard(fig, tick_overlap=False)
    assert any("look alike" in t.get_text() for t in _texts(fig))


def test_dead_filter_figure():
    g = np.random.default_rng(0)
    rows = [(f"conv{i}", g.random(16), g.random(16) < 0.2) for i in range(4)]
    check_standard(render_dataset.dead_filter_figure(rows, TITLE, 0.01))


@pytest.mark.parametrize("shape,stride", [((64, 3, 11, 11), 4), ((6, 1, 5, 5), 1), ((300, 16, 3, 3), 2)])
def test_filter_figures(shape, stride):
    w = torch.randn(*shape, generator=rng())
    w[1] = 0
    s = filter_spectra(w, stride)
    long_title = common.figure_title("lenet5", weights="fashion-mnist", layer="conv1 (features.0)",
                                     method="power spectra", what=f"{shape[0]} filters, stride {stride}")
    check_standard(render_filters.filter_grid(w, long_title, flagged=~s.structured))
    check_standard(render_filters.spectra_grid(s, long_title))
    check_standard(render_filters.summary_figure(s, summarize(s), long_title))


@pytest.fixture(scope="module")
def occlusion_result(tiny):
    x = torch.randn(1, 3, 16, 16, generator=rng(2))
    return x, occlude(tiny, x, window=4, stride=2, layer="features.2")


def test_occlusion_figure(occlusion_result):
    x, result = occlusion_result
    fig = render_occlusion.occlusion_figure(_image(), result, model_name="tiny", weights="random",
                                            class_names=["cat", "dog", "bird", "fish", "frog"])
    check_standard(fig)
    texts = [t.get_text() for t in _texts(fig)]
    assert any("random weights" in t for t in texts)
    assert not any("true class" in t for t in texts)
    if result.target == result.clean_class:
        assert any("p(predicted class)" in t for t in texts)
    panels = [ax for ax in fig.axes if ax.get_title().startswith(("(a)", "(b)", "(c)", "(d)", "(e)"))]
    assert len(panels) == 5
    frames = {(tuple(ax.get_xlim()), tuple(ax.get_ylim())) for ax in panels}
    assert len(frames) == 1, f"panels in different pixel frames: {frames}"
    sizes = {tuple(np.round(ax.get_position().size, 3)) for ax in panels}
    assert len(sizes) == 1, f"panels of different sizes: {sizes}"


def test_occlusion_panel_e_says_when_one_class_wins(occlusion_result):
    _, result = occlusion_result
    result.top_class.fill_(3)
    fig = render_occlusion.occlusion_figure(_image(), result, model_name="tiny")
    check_standard(fig)
    assert any("wins at every position" in t.get_text() for t in _texts(fig))


def test_invariance_figure(tiny):
    x = torch.randn(1, 3, 16, 16, generator=rng(3))
    r = invariance_curves(tiny, x, "translate", [-2, 0, 2])
    fig = invariance.invariance_figure(r, model_name="tiny", weights="random")
    check_standard(fig)
    texts = [t.get_text() for t in _texts(fig)]
    assert any("p(predicted class)" in t for t in texts)
    assert not any("true class" in t or "+0 px" in t for t in texts)


def _maps(n: int = 7) -> dict[str, torch.Tensor]:
    return {f"method{i}": torch.rand(16, 16, generator=rng(i)) for i in range(n)}


def test_saliency_figures():
    m = torch.rand(16, 16, generator=rng())
    long_title = "alexnet (random weights) · predicted class 281 “tabby, tabby cat” (p = 0.00123)\ngradcam · layer features.10"
    check_standard(render_saliency.map_figure(m, long_title, "max over colour of |∂ logit / ∂ pixel|"))
    check_standard(render_saliency.overlay_figure(_image(), m, long_title))
    check_standard(render_saliency.panel_figure(_image(), _maps(), long_title, {"method5": "layer features.10"}))


def test_saliency_map_says_when_constant():
    fig = render_saliency.map_figure(torch.zeros(16, 16), TITLE, "units")
    assert "nothing is salient" in fig._suptitle.get_text()


@pytest.mark.parametrize("steps", [4, 17])
def test_sanity_figures(steps):
    columns = ["original"] + [f"features.{i}" for i in range(steps - 1)]
    maps = {m: [torch.rand(16, 16, generator=rng(i)) for i in range(steps)] for m in ("gradient", "guided")}
    check_standard(render_saliency.sanity_maps_figure(maps, columns, TITLE, _image(), notes={"gradient": "passes"}),
                   tick_overlap=False)
    metrics = {name: {m: list(np.linspace(1, -0.2, steps)) for m in maps} for name in ("a", "b", "c")}
    check_standard(render_saliency.sanity_curves_figure(columns, metrics, TITLE, threshold=0.5, threshold_metric="a",
                                                        verdict_step=2))


def test_models_plot_names_do_not_overlap():
    from vizcnn.render.zoo import lineage_figure

    class Spec:
        def __init__(self, name, top1, tv):
            self.name, self.top1, self.tv_name = name, top1, tv

    class Card:
        def __init__(self, name, params, top1, tv=None):
            self.spec, self.params = Spec(name, top1, tv), params

    cards = [Card("alexnet-2012", 60_965_224, 59.3), Card("alexnet-2012-2gpu", 62_378_344, 59.3),
             Card("vgg16", 138_357_544, 71.6, "vgg16"), Card("vgg19", 143_667_240, 72.4, "vgg19"),
             Card("alexnet", 61_100_840, 56.5, "alexnet")]
    fig = lineage_figure(cards)
    check_standard(fig)
    renderer = fig.canvas.get_renderer()
    names = [t for t in fig.axes[0].texts]
    boxes = [t.get_window_extent(renderer) for t in names]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), f"{names[i].get_text()} over {names[j].get_text()}"


def test_num_has_no_negative_zero():
    assert common.num(-0.0) == "0"
    assert common.num(-1e-9, 2) == "-1e-09"
    assert common.num(-0.0004, 2) == "-0.0004"
    assert common.num(-0.001, 1) == "-0.001"
    assert f"{-0.0001:.2f}" == "-0.00"  # what the helper exists for
    assert common.figure_title("m", weights="random", layer="l", method="x") == "m (random weights) · layer l · x"
