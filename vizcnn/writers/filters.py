"""``vizcnn filters``: a convolution's filters and their spectra computed
(``vizcnn.methods.spectra``), drawn (``vizcnn.render.filters``) and written."""
from __future__ import annotations

from torch import nn

from ..io.imageio import save_figure
from ..io.output import OutputDir
from ..methods.spectra import BANDS, ConvFilters, conv_filters, filter_spectra, per_filter, summarize
from ..render.common import figure_title
from ..render.filters import filter_grid, spectra_grid, stride_text, summary_figure


def write_filters(out: OutputDir, model: nn.Module, model_name: str, layer: str | None = None, *,
                  size: int | None = None, bands: tuple[float, float] = BANDS, extra: dict | None = None) -> dict:
    """``vizcnn filters``: the filter grid, the spectra grid, the summary figure and
    summary.json (the layer's numbers and one entry per filter). The model is only read."""
    conv: ConvFilters = conv_filters(model, layer)
    s = filter_spectra(conv.weight, conv.stride, size=size)
    numbers = summarize(s, bands)  # checks the band edges before any file is written
    out_c, in_c, kh, kw = conv.weight.shape
    weights = (extra or {}).get("weights")
    layer = conv.name if conv.name == conv.path else f"{conv.name} ({conv.path})"
    shape = f"{out_c} filters {kh}×{kw}×{in_c}, stride {stride_text(conv.stride)}"

    def head(method: str) -> str:
        return figure_title(model_name, weights=weights, layer=layer, method=method, what=shape)

    files = {"filters": "filters.png", "spectra": "spectra.png", "summary": "spectra_summary.png"}
    save_figure(filter_grid(conv.weight, head("filter weights"), flagged=~s.structured), out.path(files["filters"]))
    save_figure(spectra_grid(s, head("power spectra")), out.path(files["spectra"]))
    save_figure(summary_figure(s, numbers, head("spectral summary")), out.path(files["summary"]))
    summary = {
        "model": model_name, "layer": conv.name, "module": conv.path,
        "weight_shape": [out_c, in_c, kh, kw], "dilation": list(conv.dilation), "groups": conv.groups,
        **(extra or {}), "figures": files, **numbers, "per_filter": per_filter(s, bands),
    }
    return out.finish(summary)


__all__ = ["write_filters"]
