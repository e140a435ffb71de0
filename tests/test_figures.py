"""The figure standard, checked on every figure type vizcnn draws: at most 12 inches wide,
a title, no all-constant image panel, every text inside the canvas and no two tick or
label texts over each other. Figures are drawn from seeded random tensors at a small
size; the compute (occlusion, invariance, spectra) runs on a tiny model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from figure_standard import _texts, check_standard
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
    assert any("unit 1 never fires" in t for t in texts)  # a unit index said as one, not read as a count
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


def test_dead_filters_get_their_own_bar_and_the_threshold_shows():
    """Filters that never fire are a bar of their own, left of every live one, and the
    dashed threshold at 0.001 lies well inside the axis (a log axis), not on its edge."""
    firing = np.array([0.0, 0.0, 0.0, 2e-3, 0.02, 0.3, 0.31, 0.5])
    dead = firing < 1e-3
    fig = render_dataset.dead_filter_figure([("conv1", firing, dead)], TITLE, 1e-3)
    check_standard(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    line, = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    x = line.get_xdata()[0]
    assert x == 1e-3 and np.log10(x / lo) > 1 and np.log10(hi / x) > 1  # a decade and more from each side
    bars = [(p.get_x(), p.get_x() + p.get_width(), p.get_height(), p.get_facecolor()) for p in ax.patches
            if p.get_height() > 0]
    red = [b for b in bars if b[3][0] > 0.7]
    assert len(red) == 1 and red[0][2] == 3 and red[0][1] < 1e-4  # the three dead ones, apart, left of 0.0001
    assert all(b[0] >= 1e-3 for b in bars if b[3][0] <= 0.7)  # every live filter right of the threshold
    assert "< 0.0001" in [t.get_text() for t in ax.get_xticklabels()]


def test_a_clipped_or_flush_title_fails_the_standard():
    """What the standard must catch: a title wider than the canvas, and one that touches
    its edge."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([0, 1])
    fig.suptitle("a title far too long for a four-inch figure, so its ends are cut off by the canvas edge")
    with pytest.raises(AssertionError, match="runs off the canvas"):
        check_standard(fig)
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.plot([0, 1])
    fig.text(1.0, 0.99, "flush", ha="right", va="top")
    with pytest.raises(AssertionError, match="touches its edge"):
        check_standard(fig)


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


def test_occlusion_receptive_field_box_is_visible_when_it_is_the_whole_image(occlusion_result):
    """Panel (c)'s dashed box is drawn inside the frame (through the edge pixels' centres),
    so a receptive field as large as the image is seen, and the title says it is."""
    from matplotlib.patches import Rectangle

    import dataclasses

    h, w = occlusion_result[1].projection.shape[-2:]
    result = dataclasses.replace(occlusion_result[1], projection_box=(0, h, 0, w))
    fig = render_occlusion.occlusion_figure(_image(), result, model_name="tiny")
    check_standard(fig)
    ax = next(a for a in fig.axes if a.get_title().startswith("(c)"))
    box, = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_linestyle() == "--"]
    (x0, y0), (x1, y1) = box.get_xy(), (box.get_x() + box.get_width(), box.get_y() + box.get_height())
    (left, right), (bottom, top) = ax.get_xlim(), ax.get_ylim()
    assert left < x0 < x1 < right and top < y0 < y1 < bottom, "the box lies on the frame"
    assert f"the whole {w}×{h} px image" in ax.get_title()


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


def test_channel_averaged_filters_are_not_called_rgb():
    """Weights trained on grey images (conv1's channels set to their mean) are drawn and
    named as grey; only filters whose channels differ are RGB."""
    w = torch.randn(6, 1, 5, 5, generator=rng()).repeat(1, 3, 1, 1)
    fig = render_filters.filter_grid(w, TITLE)
    check_standard(fig)
    said = " ".join(t.get_text() for t in _texts(fig))
    assert "RGB" not in said and "grey" in said
    assert "RGB" in " ".join(t.get_text() for t in _texts(render_filters.filter_grid(torch.randn(6, 3, 5, 5), TITLE)))
