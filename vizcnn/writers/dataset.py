"""``vizcnn topk`` and ``vizcnn dead-filters``: one dataset pass (``vizcnn.api.scan``), the
winners projected, drawn (``vizcnn.render.dataset``) and written; rank 0 writes."""
from __future__ import annotations

import os
from collections.abc import Sequence

from torch import nn

from ..api import project_winners, scan
from ..core.batch import Skipped
from ..core.errors import BadArgumentError
from ..core.layers import geometry_key, layer_geometry, resolve_layer
from ..core.progress import ProgressFn
from ..io.imageio import safe_filename, save_figure
from ..io.sources import ImageSource, default_workers
from ..methods.scan import MIN_FIRING, MIN_MAX, ORDER, FilterStats, ScanResult, parse_units
from ..methods.spectra import conv_filters, layer_dead_filters
from ..render.common import as_display, figure_title
from ..render.dataset import dead_filter_figure, topk_page


def _caption(source: ImageSource, i: int) -> str:
    """Image i's name in a figure: the file name without suffix, whole, else ``#i``."""
    name = source.describe(i)
    return os.path.splitext(os.path.basename(name))[0] if name != f"{source.name}#{i}" else f"#{i}"


def _skipped_json(skipped: list[Skipped]) -> list[dict]:
    return [{"index": s.index, "path": s.path, "reason": s.reason} for s in skipped]


def _pass_json(result: ScanResult, source: ImageSource, batch_size: int, workers: int | None) -> dict:
    return {
        "data_size": len(source), "images": result.images, "skipped": len(result.skipped),
        "skipped_images": _skipped_json(result.skipped), "seconds": round(result.seconds, 4),
        "images_per_second": round(result.images_per_second, 2) if result.seconds > 0 else None,
        "world_size": result.world_size, "batch_size": batch_size,
        "workers": default_workers() if workers is None else workers,
    }


def stats_json(model: nn.Module, name: str, s: FilterStats, min_firing: float, min_max: float, *,
               grey: bool = False) -> dict:
    """One layer's two counts: ``dead`` (never fire: the functional rate over the data) and,
    for the layer the model's first convolution feeds, ``dead_weights`` (dead filters in
    the paper's sense, near-zero or structureless weights:
    ``vizcnn.methods.spectra.dead_filters``; with ``grey`` input its channel sum is
    measured). Only there: first-layer filters are pictures of image patterns (Fig. 6), and
    the structure test's cost grows with the input channels (minutes for a 512-channel
    layer) while a 3x3 kernel on hundreds of channels has no picture to judge; None
    elsewhere."""
    dead = s.dead(min_firing, min_max)
    firing, mean = s.firing.tolist(), s.mean.tolist()
    maxima, norms = s.max.tolist(), None if s.weight_norm is None else s.weight_norm.tolist()
    n = len(firing)
    weights = None
    if s.conv is not None and s.conv == conv_filters(model).path:
        _conv, found = layer_dead_filters(model, s.conv, grey=grey)
        weights = found.to_json() if len(found) == n else None
    return {
        "layer": name, "module": resolve_layer(model, name)[0], "conv": s.conv, "filters": n,
        "positions": s.positions, "dead": int(dead.sum()), "dead_fraction": float(dead.sum()) / max(n, 1),
        "dead_units": [i for i in range(n) if dead[i]], "dead_weights": weights,
        "units": [{"unit": i, "firing": firing[i], "mean": mean[i], "max": maxima[i],
                   "weight_norm": None if norms is None else norms[i], "dead": bool(dead[i]),
                   "dead_weights": None if weights is None else i in weights["dead_filters"]} for i in range(n)],
    }


def _check_thresholds(min_firing: float, min_max: float) -> None:
    if not 0 <= min_firing <= 1:
        raise BadArgumentError(f"min firing fraction must be in [0, 1], got {min_firing}")
    if not 0 <= min_max <= 1:
        raise BadArgumentError(f"min relative max must be in [0, 1], got {min_max}")


def write_dead_filter_figure(out, model_name: str, data_name: str, images: int, stats: dict[str, FilterStats],
                             min_firing: float, min_max: float, *, weights: str | None = None) -> str:

    rows = [(name, s.firing.numpy(), s.dead(min_firing, min_max).numpy()) for name, s in stats.items()]
    title = (figure_title(model_name, weights=weights, layer=", ".join(stats), method="dead filters",
                          what=f"firing fraction per filter over {images} images ({data_name})")
             + f"\ndead (never fire): fires on < {min_firing:g} of positions, or max ≤ {min_max:g} × the layer's "
               f"largest max")
    file = "dead_filters.png"
    save_figure(dead_filter_figure(rows, title, min_firing), out.path(file))
    return file


def winner_records(tk, u: int, box, source: ImageSource, classes: Sequence[str] | None) -> list[dict]:
    """Unit ``u``'s winners in ``tk`` (a TopK on the CPU) as summary.json records: rank,
    image index, its path, label and class name, position, value and the receptive-field
    ``box(y, x)`` (top, bottom, left, right) in pixels; empty slots (image -1) left out."""
    records = []
    for r in range(tk.value.shape[1]):
        i = int(tk.image[u, r])
        if i < 0:
            continue
        yy, xx = int(tk.y[u, r]), int(tk.x[u, r])
        t, b, left, right = box(yy, xx)
        label = source.label(i)
        records.append({"rank": r, "image": i, "path": source.describe(i), "label": label,
                        "class": classes[label] if label is not None and classes and label < len(classes) else None,
                        "y": yy, "x": xx, "value": float(tk.value[u, r]),
                        "box": {"top": t, "bottom": b, "left": left, "right": right}})
    return records


def write_topk(out, model: nn.Module, model_name: str, source: ImageSource, spec, *, layers: Sequence[str],
               top: int = 9, distinct_images: bool = False, units: str | Sequence[int] | None = None,
               method: str = "deconvnet", dead_filters: bool = False, min_firing: float = MIN_FIRING,
               min_max: float = MIN_MAX, batch_size: int = 32, num_workers: int | None = None,
               page_units: int = 16, grey: bool = False, extra: dict | None = None,
               progress: ProgressFn | None = None) -> dict | None:
    """``vizcnn topk``: one pass (with the dead-filter statistics of the same layers when
    ``dead_filters``), then the winners of ``units`` projected (default the first page,
    ``page_units`` units; ``"all"`` for every unit), one paged PNG grid per layer
    (``topk_<layer>_p<n>.png``), and summary.json with every unit's winners.

    Under torch.distributed every rank computes and merges; only rank 0 (whose ``out``
    is an OutputDir; the others may pass None) projects and writes. Returns the summary
    on rank 0, None elsewhere.
    """

    _check_thresholds(min_firing, min_max)
    layers = list(dict.fromkeys(layers))
    for name in layers:
        resolve_layer(model, name)
    if not isinstance(page_units, int) or page_units < 1:
        raise BadArgumentError(f"page_units must be a positive integer, got {page_units!r}")
    geometry = layer_geometry(model, tuple(spec.input_size))
    chosen = {n: parse_units(units, geometry[geometry_key(model, n)].shape[0], default=page_units) for n in layers}
    result = scan(model, source, spec, topk_layers=layers, stats_layers=layers if dead_filters else (), top=top,
                  distinct_images=distinct_images, batch_size=batch_size, num_workers=num_workers, geometry=geometry,
                  progress=progress)
    if result.rank != 0:
        return None
    _, h, w = spec.input_size
    entries = []
    for name in layers:
        info = geometry[geometry_key(model, name)]
        tk = result.topk[name].cpu()
        spatial = len(info.shape) == 3
        unit_rows = []
        for u in range(tk.value.shape[0]):
            box = (lambda y, x: info.box(y, x, h, w)) if spatial else (lambda y, x: (0, h, 0, w))
            unit_rows.append({"unit": u, "winners": winner_records(tk, u, box, source, source.classes)})
        # a winner with activation 0 is no winner: the unit does not fire there (or anywhere)
        zero_winners = sum(1 for row in unit_rows for win in row["winners"] if not win["value"] > 0)
        never_fire = [row["unit"] for row in unit_rows
                      if row["winners"] and not any(win["value"] > 0 for win in row["winners"])]
        files = []
        pages = [chosen[name][i:i + page_units] for i in range(0, len(chosen[name]), page_units)]
        for p, page in enumerate(pages, 1):
            projections = project_winners(model, source, spec, name, result.topk[name], page, method=method,
                                          geometry=info, progress=progress)
            rows = []
            for u in page:
                cells = []
                for r in range(top):
                    pr = projections.get((u, r))
                    cells.append(None if pr is None else
                                 (as_display(pr.projection), pr.patch, pr.value, _caption(source, pr.image)))
                rows.append((u, cells))
            unit_range = f"units {page[0]}–{page[-1]}" if page == list(range(page[0], page[-1] + 1)) else "units"
            title = (figure_title(model_name, weights=(extra or {}).get("weights"), layer=name, method=method,
                                  what=f"top {top} activations per unit over {result.images} images ({source.name})")
                     + f"{' · distinct images' if distinct_images else ''} · {unit_range} · page "
                     f"{p}/{len(pages)}\neach pair: {method} projection | image patch (receptive field)")
            file = f"topk_{safe_filename(name)}_p{p}.png"
            if progress is not None:
                progress(p - 1, len(pages), f"drawing {name}'s pages")
            save_figure(topk_page(rows, title), out.path(file))
            files.append(file)
        entries.append({"layer": name, "module": info.path, "channels": info.shape[0],
                        "receptive_field": list(info.rf), "stride": list(info.jump), "files": files,
                        "figure_units": chosen[name], "zero_winners": zero_winners,
                        "units_never_firing": never_fire, "units": unit_rows})
    summary = {"model": model_name, "data": source.name, "method": method, "top": top,
               "distinct_images": distinct_images, "order": ORDER, "input_size": list(spec.input_size),
               **(extra or {}), **_pass_json(result, source, batch_size, num_workers), "layers": entries}
    if dead_filters:
        stats = {n: s.cpu() for n, s in result.stats.items()}
        summary["dead_filters"] = {"min_firing": min_firing, "min_max": min_max, "figure": write_dead_filter_figure(
            out, model_name, source.name, result.images, stats, min_firing, min_max,
            weights=(extra or {}).get("weights")),
            "layers": [stats_json(model, n, s, min_firing, min_max, grey=grey) for n, s in stats.items()]}
    return out.finish(summary)


def write_dead_filters(out, model: nn.Module, model_name: str, source: ImageSource, spec, *,
                       layers: Sequence[str], min_firing: float = MIN_FIRING, min_max: float = MIN_MAX,
                       batch_size: int = 32, num_workers: int | None = None, grey: bool = False,
                       extra: dict | None = None, progress: ProgressFn | None = None) -> dict | None:
    """``vizcnn dead-filters``: one pass, the firing-fraction histogram (dead_filters.png)
    and summary.json with every filter's statistics and both counts per layer: dead
    (never fire) and dead filters (near-zero or structureless weights; ``grey``: the
    model's input is grey fed as equal channels, see :func:`stats_json`). Rank 0 writes
    (see write_topk)."""
    _check_thresholds(min_firing, min_max)
    layers = list(dict.fromkeys(layers))
    for name in layers:
        resolve_layer(model, name)
    result = scan(model, source, spec, stats_layers=layers, batch_size=batch_size, num_workers=num_workers,
                  progress=progress)
    if result.rank != 0:
        return None
    stats = {n: s.cpu() for n, s in result.stats.items()}
    file = write_dead_filter_figure(out, model_name, source.name, result.images, stats, min_firing, min_max,
                                    weights=(extra or {}).get("weights"))
    entries = [stats_json(model, n, s, min_firing, min_max, grey=grey) for n, s in stats.items()]
    summary = {"model": model_name, "data": source.name, "input_size": list(spec.input_size),
               "min_firing": min_firing, "min_max": min_max, **(extra or {}),
               **_pass_json(result, source, batch_size, num_workers), "figure": file,
               "dead": sum(e["dead"] for e in entries), "filters": sum(e["filters"] for e in entries),
               "layers": entries}
    return out.finish(summary)


__all__ = ["write_topk", "write_dead_filters"]
