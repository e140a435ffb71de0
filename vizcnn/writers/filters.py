"""``vizcnn filters``: a convolution's filters and their spectra computed
(``vizcnn.methods.spectra``), drawn (``vizcnn.render.filters``) and written."""
from __future__ import annotations

from torch import nn

from ..core.layers import resolve_layer
from ..io.imageio import save_figure
from ..io.output import OutputDir
from ..methods.spectra import (BANDS, ConvFilters, channel_sum_measured, conv_filters, dead_filters, effective_filters,
                               filter_spectra, per_filter, summarize)
from ..render.common import figure_title
from ..render.filters import filter_grid, spectra_grid, stride_text, summary_figure


def write_filters(out: OutputDir, model: nn.Module, model_name: str, layer: str | None = None, *,
                  size: int | None = None, bands: tuple[float, float] = BANDS, grey: bool = False,
                  extra: dict | None = None) -> dict:
    """``vizcnn filters``: the filter grid, the spectra grid, the summary figure and
    summary.json (the layer's numbers, its dead filters and one entry per filter). With
    ``grey`` (the model's input is grey fed as equal channels) the model's first
    convolution is measured and drawn as its effective filter, the channel sum
    (``vizcnn.methods.spectra.effective_filters``); so is any layer whose channels are
    identical. The model is only read."""
    conv: ConvFilters = conv_filters(model, layer)
    summed = channel_sum_measured(model, conv, grey)
    weight = effective_filters(conv.weight, summed)
    s = filter_spectra(weight, conv.stride, size=size)
    numbers = summarize(s, bands)  # checks the band edges before any file is written
    dead = dead_filters(conv.weight, grey=summed, size=size, spectra=s)
    out_c, in_c, kh, kw = conv.weight.shape
    weights = (extra or {}).get("weights")
    # a name means the same module in every command (`vizcnn layers`: AlexNet's conv1 is the
    # ReLU features.1); the filters are those of the convolution feeding it (features.0)
    module = resolve_layer(model, conv.name)[0]
    layer = conv.name if conv.name == conv.path else \
        f"{conv.name} ({module}{'' if module == conv.path else f'; filters of {conv.path}'})"
    shape = (f"{out_c} filters {kh}×{kw}×{in_c}" + (" summed over channels (grey input)" if summed else "")
             + f", stride {stride_text(conv.stride)}")

    def head(method: str) -> str:
        return figure_title(model_name, weights=weights, layer=layer, method=method, what=shape)

    files = {"filters": "filters.png", "spectra": "spectra.png", "summary": "spectra_summary.png"}
    save_figure(filter_grid(weight, head("filter weights"), flagged=dead.dead), out.path(files["filters"]))
    save_figure(spectra_grid(s, head("power spectra")), out.path(files["spectra"]))
    save_figure(summary_figure(s, numbers, head("spectral summary")), out.path(files["summary"]))
    summary = {
        "model": model_name, "layer": conv.name, "module": module, "conv": conv.path,
        "weight_shape": [out_c, in_c, kh, kw], "dilation": list(conv.dilation), "groups": conv.groups,
        **(extra or {}), "figures": files, "effective": "channel sum (grey input)" if summed else "the weights",
        **numbers, "dead_filters": dead.to_json(),
        "per_filter": [{**row, "norm_ratio": float(dead.norm_ratio[i]), "dead": bool(dead.dead[i])}
                       for i, row in enumerate(per_filter(s, bands))],
    }
    return out.finish(summary)


__all__ = ["write_filters"]
