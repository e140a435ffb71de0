"""``vizcnn report``: every analysis of one image in one folder, with an index.html.

The report runs the library's own writers, one after another, each into a subfolder of
the report folder, and collects what they return:

============  ============  ====================================================================
step          subfolder     what it writes (``write_*``)
============  ============  ====================================================================
card          (none)        the model card: per conv layer kernel, stride, output, receptive
                            field, parameters; totals (parameters, FLOPs)
filters       filters/      the first convolution's filters, their spectra and aliasing
                            (``vizcnn.render_filters.write_filters``)
deconv        deconv/       the top-``top`` activations of each layer in the image, projected
                            with the deconvnet (``vizcnn.reports.write_deconv``)
saliency      saliency/     every saliency method side by side, and each map on its own
                            (``vizcnn.saliency.write_saliency``)
sanity        sanity/       cascading randomization of the layers (``vizcnn.sanity.write_sanity``)
occlusion     occlusion/    Zeiler & Fergus Fig. 7 (``vizcnn.render_occlusion.write_occlusion``)
invariance    invariance/   Zeiler & Fergus Fig. 5: feature distance and class probability under
                            translation, scale and rotation
                            (``vizcnn.render_occlusion.write_invariance``)
dataset       dataset/      with ``data``: the top-``top`` activations of each unit over the
                            dataset (Fig. 2) and the dead-filter statistics, in one pass
                            (``vizcnn.dataset.write_topk``)
============  ============  ====================================================================

One ``summary.json`` in the report folder holds every step's summary under the step's
key, so every number index.html shows is in it; every file name in it is relative to
the report folder. Figures come in one format (``fmt``: png, pdf or svg) at one
``dpi``. The steps never change the model (each one preserves it), and a step that fails
with a vizcnn error is recorded (``errors``) and shown, without stopping the others.
"""
from __future__ import annotations

import html
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ActivationError, BadArgumentError, BadInputError, VizcnnError
from .imageio import figure_dpi, write_atomic, write_png
from .layers import MAX_DEFAULT_LAYERS, default_layers  # noqa: F401  (the one default-layer rule, re-exported)
from .output import OutputDir

FORMATS = ("png", "pdf", "svg")
#: The sanity check's default methods: the one Adebayo et al. found to fail (guided
#: backprop) between two that pass, each one forward and one backward per cascade step.
SANITY_METHODS = ("gradient", "guided", "gradcam")
#: Integrated-gradients quadrature nodes and SmoothGrad samples (the saliency command's
#: default is 50; 16 keeps a 224-px report on a CPU fast, IG's completeness error says
#: whether it is enough).
STEPS = 16
#: Units per layer drawn in the dataset grids (every unit's winners are in summary.json).
DATA_UNITS = 8


@dataclass(frozen=True)
class Step:
    key: str
    title: str


ALL_STEPS = (
    Step("card", "model card"),
    Step("filters", "first-layer filters and spectra"),
    Step("deconv", "deconvnet top activations per layer"),
    Step("saliency", "saliency maps, all methods"),
    Step("sanity", "sanity check (cascading randomization)"),
    Step("occlusion", "occlusion sensitivity"),
    Step("invariance", "invariance to translation, scale and rotation"),
    Step("dataset", "dataset top-k and dead filters"),
)

Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- step folders


class StepFolder:
    """What one step's ``write_*`` function gets as its output folder: files go to
    ``<report>/<folder>/``, figures in the report's format, and ``finish`` returns the
    summary (file names made relative to the report folder) instead of writing one.

    The report's OutputDir registers every file, so it lists them all and a later run
    into the same folder removes the files this run no longer writes.
    """

    def __init__(self, out: OutputDir, folder: str, fmt: str):
        self.out, self.folder, self.fmt = out, folder, fmt
        self.root = out.root / folder
        try:
            self.root.mkdir(exist_ok=True)
        except OSError as e:
            raise BadInputError(f"cannot create folder {self.root}: {e.strerror or e}") from None
        self.names: dict[str, str] = {}  # the writer's file name -> path relative to the report folder

    def path(self, name: str) -> Path:
        stem, dot, suffix = name.rpartition(".")
        actual = f"{stem}.{self.fmt}" if dot and suffix.lower() in FORMATS else name
        rel = f"{self.folder}/{actual}"
        self.names[name] = rel
        return self.out.path(rel)

    def finish(self, summary: dict) -> dict:
        return {**_renamed(summary, self.names), "files": sorted(set(self.names.values()))}


def _renamed(obj, names: dict[str, str]):
    """``obj`` with every string that is a file name the writer used replaced by its path."""
    if isinstance(obj, str):
        return names.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _renamed(v, names) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_renamed(v, names) for v in obj]
    return obj


def _remove_stale(out: OutputDir) -> None:
    """Files of an earlier report in subfolders that this run did not write (OutputDir
    itself only cleans the top folder), then subfolders left empty."""
    root = out.root.resolve()
    folders = set()
    for name in set(out.previous) - set(out.written):
        if "/" not in name or ".." in name.split("/") or name.startswith("/"):
            continue
        target = (out.root / name)
        if target.resolve().parent.parent == root and target.is_file() and not target.is_symlink():
            target.unlink()
            folders.add(target.parent)
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: something else lives there
            pass


# --------------------------------------------------------------------------- the model card


def _conv_friendly(model: nn.Module) -> dict[str, str]:
    """conv module path -> the friendly name of its (rectified) output (features.0 -> conv1)."""
    from .layers import feeding_layer, friendly_names

    names = {}
    for friendly in friendly_names(model):
        path = feeding_layer(model, friendly)
        if path is not None:
            names.setdefault(path, friendly)
    return names


def model_card(model: nn.Module, model_name: str, input_size: tuple[int, int, int], spec=None) -> dict:
    """The model as a table: per convolution its kernel, stride, padding, output shape,
    receptive field, jump (px between neighbouring units) and parameters; totals of
    trainable parameters and FLOPs (2 per multiply-add) for one image. Computed from
    ``model`` itself on the meta device (no weights are copied); the published figures
    come from ``spec`` where given."""
    from .layers import count_flops, is_conv, layer_geometry, meta_copy

    probe = meta_copy(model).eval()
    geometry = layer_geometry(probe, input_size)
    modules = dict(model.named_modules())
    friendly = _conv_friendly(model)
    convs = []
    for key, info in geometry.items():
        m = modules.get(info.path)
        if key != info.path or info.kernel is None or m is None or not is_conv(m):
            continue
        padding = getattr(m, "padding", None)
        convs.append({
            "layer": friendly.get(info.path, info.path), "module": info.path, "kind": info.kind,
            "kernel": list(info.kernel), "stride": list(info.stride),
            "padding": list(padding) if isinstance(padding, (tuple, list)) else padding,
            "output": list(info.shape), "receptive_field": list(info.rf), "jump": list(info.jump),
            "params": sum(p.numel() for p in m.parameters()),
        })
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops = count_flops(probe, input_size)
    card = {"name": model_name, "input_size": list(input_size), "params": params, "flops": flops,
            "gflops": round(flops / 1e9, 4), "convs": convs,
            "conv_params": sum(c["params"] for c in convs)}
    if spec is not None:
        card.update({"family": spec.family, "num_classes": spec.num_classes,
                     "published_params": spec.published_params, "top1": spec.top1, "top5": spec.top5,
                     "source": spec.source})
    return card


# --------------------------------------------------------------------------- the report


def check_report_options(*, fmt: str, dpi: int, top: int, steps: int, data_units: int) -> None:
    if fmt not in FORMATS:
        raise BadArgumentError(f"unknown figure format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for name, value in (("dpi", dpi), ("top", top), ("steps", steps), ("units", data_units)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadArgumentError(f"{name} must be a positive integer, got {value!r}")


def write_report(out: OutputDir, model: nn.Module, model_name: str, image: np.ndarray, x: torch.Tensor, *,
                 spec=None, layers: Sequence[str] | None = None, top: int = 9, data=None,
                 names: Sequence[str] | None = None, fmt: str = "png", dpi: int = 100, steps: int = STEPS,
                 sanity_methods: Sequence[str] = SANITY_METHODS, data_units: int = DATA_UNITS,
                 batch_size: int = 32, num_workers: int | None = 0, extra: dict | None = None,
                 progress: Progress | None = None) -> dict:
    """``vizcnn report``: runs every step (see the module docstring) into ``out``, writes
    input.png, index.html and summary.json, and returns the summary.

    image: the H×W×C display image in [0, 1] the model sees; x: its normalised tensor
    (1, C, H, W) on the model's device. spec: the model's ModelSpec (default: looked up
    by ``model_name``; needed for ``data``). layers: for deconv and the dataset grids
    (default :func:`default_layers`). data: a ``vizcnn.data.ImageSource`` or None.
    names: class names or None. steps: integrated-gradients nodes and SmoothGrad samples.
    extra: facts recorded in summary.json and shown (weights, image, device, seed).
    progress(i, n, title) is called before step i (1-based) of n.
    """
    from .layers import resolve_layer
    from .models import get_spec

    check_report_options(fmt=fmt, dpi=dpi, top=top, steps=steps, data_units=data_units)
    spec = spec if spec is not None else get_spec(model_name)
    layers = list(dict.fromkeys(layers)) if layers else default_layers(model)
    for name in layers:  # bad names fail before any work
        resolve_layer(model, name)
    if data is not None and len(data) == 0:
        raise BadArgumentError(f"DATA {data.name}: no images")
    extra = dict(extra or {})
    plan = [s for s in ALL_STEPS if s.key != "dataset" or data is not None]
    summary: dict = {"model": model_name, **extra, "input_size": list(x.shape[1:]), "format": fmt, "dpi": dpi,
                     "layers": layers, "top": top, "steps_run": [s.key for s in plan]}
    write_png(out.path("input.png"), np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image)
    summary["input_image"] = "input.png"
    runners = _runners(out, model, model_name, image, x, spec=spec, layers=layers, top=top, data=data,
                       names=list(names) if names is not None else None, fmt=fmt, steps=steps,
                       sanity_methods=list(sanity_methods), data_units=data_units, batch_size=batch_size,
                       num_workers=num_workers, extra=extra)
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    start = time.perf_counter()
    with figure_dpi(dpi):
        for i, step in enumerate(plan, 1):
            if progress is not None:
                progress(i, len(plan), step.title)
            t0 = time.perf_counter()
            try:
                summary[step.key] = runners[step.key]()
            except ActivationError:  # strict: a projection would fall back to the gradient
                raise
            except VizcnnError as e:  # recorded and shown; the other steps still run
                errors[step.key] = str(e)
            timings[step.key] = round(time.perf_counter() - t0, 3)
    timings["total"] = round(time.perf_counter() - start, 3)
    summary["timings_s"] = timings
    summary["errors"] = errors
    summary["index"] = "index.html"
    write_atomic(out.path("index.html"), render_index(summary).encode("utf-8"))
    result = out.finish(summary)
    _remove_stale(out)
    return result


def _runners(out, model, model_name, image, x, *, spec, layers, top, data, names, fmt, steps, sanity_methods,
             data_units, batch_size, num_workers, extra) -> dict[str, Callable[[], dict]]:
    """One function per step; each returns the step's summary."""
    from .saliency import METHODS, model_title

    title = model_title(model_name, extra)  # "alexnet (random weights)": figures say so

    def plain(summary: dict) -> dict:
        if summary.get("model") == title:
            summary["model"] = model_name
        return summary

    def card():
        return model_card(model, model_name, tuple(x.shape[1:]), spec)

    def filters():
        from .render_filters import write_filters

        return plain(write_filters(StepFolder(out, "filters", fmt), model, title))

    def deconv():
        from .reports import write_deconv

        return plain(write_deconv(StepFolder(out, "deconv", fmt), model, title, image, x, layers=layers, top=top))

    def saliency():
        from .saliency import write_saliency

        return write_saliency(StepFolder(out, "saliency", fmt), model, model_name, image, x, methods=METHODS,
                              names=names, extra=extra, steps=steps, samples=steps)

    def sanity():
        from .sanity import write_sanity

        return write_sanity(StepFolder(out, "sanity", fmt), model, model_name, image, x, methods=sanity_methods,
                            names=names, extra=extra, steps=steps, samples=steps)

    def occlusion():
        from .render_occlusion import write_occlusion

        return plain(write_occlusion(StepFolder(out, "occlusion", fmt), model, title, image, x, class_names=names))

    def invariance():
        from .render_occlusion import write_invariance

        return plain(write_invariance(StepFolder(out, "invariance", fmt), model, title, x, mean=spec.mean,
                                      std=spec.std, class_names=names, batch_size=batch_size))

    def dataset():
        from .dataset import write_topk

        return plain(write_topk(StepFolder(out, "dataset", fmt), model, title, data, spec, layers=layers, top=top,
                                dead_filters=True, page_units=data_units, batch_size=batch_size,
                                num_workers=num_workers))

    return {"card": card, "filters": filters, "deconv": deconv, "saliency": saliency, "sanity": sanity,
            "occlusion": occlusion, "invariance": invariance, "dataset": dataset}


# --------------------------------------------------------------------------- index.html

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
       margin: 0; background: #f4f4f2; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-top: 12px; border-top: 2px solid #e3e3df; }
h3 { font-size: 16px; margin: 22px 0 6px; }
p.sub { color: #555; margin: 0 0 12px; }
nav { font-size: 14px; margin: 10px 0 4px; display: flex; flex-wrap: wrap; gap: 4px 16px; }
nav a { white-space: nowrap; }
a { color: #1a5fb4; }
.warn { background: #fff4d6; border-left: 4px solid #e5a50a; padding: 8px 12px; margin: 12px 0; }
.error { background: #fde8e8; border-left: 4px solid #c01c28; padding: 8px 12px; margin: 12px 0; }
.top { display: flex; gap: 28px; align-items: flex-start; flex-wrap: wrap; }
.top figure { margin: 0; flex: 0 0 auto; }
.top figure img { width: 224px; image-rendering: pixelated; border: 1px solid #ccc; }
.keys { flex: 1 1 520px; }
table { border-collapse: collapse; font-size: 13.5px; margin: 6px 0 10px; }
th, td { border-bottom: 1px solid #e3e3df; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f2; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
table.keys-table td:first-child { color: #555; white-space: nowrap; }
figure.fig { margin: 10px 0 22px; }
figure.fig a { display: block; }
figure.fig img { display: block; max-width: 100%; height: auto; border: 1px solid #e3e3df; }
figure.fig figcaption { font-size: 13.5px; color: #333; margin-top: 4px; max-width: 980px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.grid figure.fig { flex: 1 1 340px; max-width: 560px; margin: 4px 0; }
.pass { color: #26a269; font-weight: 600; }
.fail { color: #c01c28; font-weight: 600; }
details { margin: 8px 0 16px; }
summary { cursor: pointer; color: #1a5fb4; }
.pdf { padding: 10px 14px; border: 1px dashed #aaa; display: inline-block; }
footer { margin-top: 36px; font-size: 13px; color: #555; }
code { font-size: 13px; background: #f4f4f2; padding: 1px 4px; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{digits}g}"
    return _e(v)


def _distinct(values: Sequence[float], digits: int = 3) -> list[str]:
    """The values with the fewest significant digits (3 to 7) that tell unequal ones apart."""
    for d in range(digits, 8):
        shown = [f"{v:.{d}g}" for v in values]
        if all(a != b for a, b, x, y in zip(shown, shown[1:], values, values[1:]) if x != y):
            break
    return shown


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _fig(src: str, caption: str, *, alt: str, fmt: str) -> str:
    """A figure: the image (a link to the file; PDFs only as a link) and its caption
    (already HTML)."""
    if src.lower().endswith(".pdf"):
        body = f'<a class="pdf" href="{_e(src)}">{_e(alt)} (PDF)</a>'
    else:
        body = f'<a href="{_e(src)}"><img src="{_e(src)}" alt="{_e(alt)}" loading="lazy"></a>'
    return f'<figure class="fig">{body}<figcaption>{caption}</figcaption></figure>'


def _table(head: Sequence[str] | None, rows: Sequence[Sequence[str]], numeric: Sequence[bool] | None = None,
           cls: str = "") -> str:
    """A table of cells that are already HTML; ``head`` None: no header row."""
    width = len(head) if head else max((len(r) for r in rows), default=0)
    numeric = numeric or [False] * width
    th = "".join(f'<th class="n">{h}</th>' if n else f"<th>{h}</th>" for h, n in zip(head, numeric)) if head else ""
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if n else f"<td>{c}</td>"
                                    for c, n in zip(row, numeric)) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>{f'<tr>{th}</tr>' if th else ''}{body}</table>"


def _flops(n: int) -> str:
    return f"{n / 1e9:.3g} GFLOPs" if n >= 1e8 else f"{n / 1e6:.3g} MFLOPs"


def _xy(v: Sequence[int]) -> str:
    return f"{v[0]}×{v[1]}" if len(v) == 2 and v[0] != v[1] else f"{v[0]}"


def _shape(v: Sequence[int]) -> str:
    return "×".join(str(i) for i in v)


def _class(name, index) -> str:
    return f"“{_e(name)}” (class {index})" if name is not None else f"class {index}"


def render_index(summary: dict) -> str:
    """index.html for a report summary: static, inline CSS, no scripts, every number
    from ``summary``, every image a relative path inside the report folder."""
    s = summary
    fmt = s.get("format", "png")
    model = s.get("model", "?")
    weights = s.get("weights")
    image = s.get("image", "")
    sections: list[tuple[str, str, str]] = []  # (id, title, html)
    errors = s.get("errors", {})

    def error(key: str) -> str:
        return f'<p class="error">This step failed: {_e(errors[key])}</p>' if key in errors else ""

    # ---- key numbers
    keys: list[tuple[str, str]] = []
    sal = s.get("saliency")
    if sal:
        keys.append(("prediction", f"{_class(sal.get('class_name'), sal.get('target'))}, "
                                   f"p = {_num(sal.get('probability'))}"))
    f = s.get("filters")
    if f:
        af = f["alias_fraction"]
        if max(f["stride"]) > 1:
            keys.append((f"{_e(f['layer'])} aliasing",
                         f"median {_pct(af['median'])} of a filter's energy lies beyond the stride-{f['stride'][0]} "
                         f"Nyquist limit and is aliased (white-noise filters: {_pct(af['noise_expected'])})"))
        else:
            keys.append((f"{_e(f['layer'])} aliasing", "none: stride 1 keeps every frequency"))
        st = f.get("structure", {})
        keys.append((f"{_e(f['layer'])} filters", f"{f['filters']} filters, {st.get('unstructured', '–')} without "
                                                   f"spatial structure; peak frequency low/mid/high "
                                                   f"{_pct(f['bands']['fractions']['low'])} / "
                                                   f"{_pct(f['bands']['fractions']['mid'])} / "
                                                   f"{_pct(f['bands']['fractions']['high'])}"))
    san = s.get("sanity")
    if san:
        parts = []
        for m, v in san["verdicts"].items():
            label = {True: '<span class="pass">passes</span>', False: '<span class="fail">fails</span>',
                     None: "no verdict"}[v["passes"]]
            parts.append(f"{_e(m)} {label}")
        keys.append(("sanity check", ", ".join(parts)))
    occ = s.get("occlusion")
    if occ:
        mp = occ["min_probability"]
        b = mp["box"]
        before, after = _distinct([occ["probability_unoccluded"], mp["value"]])
        keys.append(("occlusion", f"p({_e(occ.get('target_name') or occ['target'])}) falls from "
                                  f"{before} to {after} with the grey "
                                  f"square at rows {b['top']}–{b['bottom'] - 1}, columns {b['left']}–"
                                  f"{b['right'] - 1}"))
    ds = s.get("dataset")
    if ds and ds.get("dead_filters"):
        parts = [f"{_e(e['layer'])} {e['dead']}/{e['filters']}" for e in ds["dead_filters"]["layers"]]
        keys.append(("dead filters", f"{', '.join(parts)} over {ds['images']} images of {_e(ds['data'])}"))
    card = s.get("card")
    if card:
        keys.append(("model size", f"{_num(card['params'])} parameters, {_flops(card['flops'])} per image"))
    keys.append(("run time", f"{_num(s.get('timings_s', {}).get('total'))} s on {_e(s.get('device', '?'))}"))

    warn = ""
    if weights == "random":
        warn = ('<p class="warn"><b>Random weights</b> (seed ' + _e(s.get("seed", 0)) + '): this network has '
                'learned nothing, so its predictions, class names and maps say nothing about the image; they show '
                'what each method computes and how the architecture shapes it. Use <code>--weights imagenet</code> '
                'or a checkpoint for a trained network.</p>')
    top5 = ""
    if sal and sal.get("top5"):
        probs = _distinct([t["probability"] for t in sal["top5"]])
        top5 = "<h3>Top-5 prediction</h3>" + _table(
            ["class", "name", "probability"],
            [[str(t["index"]), _e(t["class_name"]), p] for t, p in zip(sal["top5"], probs)],
            [True, False, True])
    overview = (f'<div class="top"><figure><a href="{_e(s["input_image"])}"><img src="{_e(s["input_image"])}" '
                f'alt="input image"></a><figcaption>what the model sees: {_e(_shape(s["input_size"]))}</figcaption>'
                f'</figure><div class="keys">' + _table(None, [[k, v] for k, v in keys], cls="keys-table")
                + top5 + "</div></div>")
    sections.append(("overview", "Overview", warn + overview))

    # ---- model card
    if card or "card" in errors:
        body = error("card")
        if card:
            rows = [[_e(c["layer"]), f"<code>{_e(c['module'])}</code>", _e(c["kind"]), _xy(c["kernel"]),
                     _xy(c["stride"]), _e(_xy(c["padding"]) if isinstance(c["padding"], list) else c["padding"]),
                     _shape(c["output"]), _xy(c["receptive_field"]), _xy(c["jump"]), _num(c["params"])]
                    for c in card["convs"]]
            body += _table(["layer", "module", "kind", "kernel", "stride", "padding", "output C×H×W",
                            "receptive field (px)", "jump (px)", "parameters"], rows,
                           [False] * 3 + [True] * 7)
            facts = [f"input {_shape(card['input_size'])}", f"{_num(card['params'])} trainable parameters"
                     + (f" (published: {_num(card['published_params'])})" if card.get("published_params") else ""),
                     f"{_num(card['conv_params'])} of them in convolutions",
                     f"{_flops(card['flops'])} per image (2 per multiply-add)"]
            if card.get("top1") is not None:
                facts.append(f"published ImageNet top-1 {card['top1']}% (with trained weights)")
            body += ("<p>" + " · ".join(facts) + ". Receptive field: the input pixels one unit of the layer sees; "
                     "jump: the distance in input pixels between neighbouring units.</p>")
        sections.append(("card", "Model card", body))

    # ---- filters
    if f or "filters" in errors:
        body = error("filters")
        if f:
            figs = f["figures"]
            af, bands = f["alias_fraction"], f["bands"]
            body += _fig(figs["filters"], (
                f"The {f['filters']} filters of {_e(f['layer'])} (<code>{_e(f['module'])}</code>, "
                f"{f['kernel'][0]}×{f['kernel'][1]}, stride {f['stride'][0]}), each scaled to its own range "
                f"(grey = 0); colour where the layer sees RGB. Filters the structure test finds no spatial "
                f"structure in are marked."), alt="filters", fmt=fmt)
            body += _fig(figs["spectra"], (
                "Each filter's power spectrum (frequency in cycles/pixel, 0 at the centre) with the stride's "
                "Nyquist square: energy outside it is folded back (aliased) by the strided convolution."),
                alt="spectra", fmt=fmt)
            body += _fig(figs["summary"], (
                f"Aliasing fraction per filter: median {_num(af['median'], 2)}, mean {_num(af['mean'], 2)}, "
                f"energy-weighted {_num(af['energy_weighted'], 2)} (white-noise filters: "
                f"{_num(af['noise_expected'], 2)}). Peak frequencies low / mid / high (edges "
                f"{bands['edges'][0]:g}, {bands['edges'][1]:g} cycles/px): {bands['counts']['low']} / "
                f"{bands['counts']['mid']} / {bands['counts']['high']} filters."), alt="spectra summary", fmt=fmt)
        sections.append(("filters", "First-layer filters and their spectra", body))

    # ---- deconv
    dc = s.get("deconv")
    if dc or "deconv" in errors:
        body = error("deconv")
        if dc:
            body += (f"<p>For each layer, the {dc['top']} strongest activations in the image (one per channel, at "
                     f"its maximum), each projected back to pixels with the {_e(dc['method'])} (Zeiler &amp; Fergus "
                     f"2014, Fig. 2) and shown beside the image patch under the unit's receptive field. Labels: "
                     f"channel and activation value.</p>")
            for e in dc["layers"]:
                units = ", ".join(f"ch {u['channel']} ({_num(u['value'])}) at ({u['y']}, {u['x']})"
                                  for u in e["units"][:3])
                body += _fig(e["file"], (
                    f"<b>{_e(e['layer'])}</b> (<code>{_e(e['module'])}</code>): receptive field "
                    f"{_xy(e['receptive_field'])} px, units every {_xy(e['stride'])} px. Strongest: {units}."),
                    alt=f"deconv {e['layer']}", fmt=fmt)
        sections.append(("deconv", "Deconvnet: the strongest activations of each layer", body))

    # ---- saliency
    if sal or "saliency" in errors:
        body = error("saliency")
        if sal:
            methods = sal["methods"]
            files = sal.get("files", [])
            body += _fig(sal["panel"], (
                f"Which pixels the score of {_class(sal.get('class_name'), sal.get('target'))} depends on, by "
                f"seven methods, each overlaid on the image and scaled to its own 99.5th percentile. gradient, "
                f"deconvnet and guided backprop differ only in the rule at each ReLU; integrated gradients and "
                f"SmoothGrad use {methods.get('integrated-gradients', {}).get('steps', '–')} steps / samples; "
                f"Grad-CAM is taken at {_e(methods.get('gradcam', {}).get('layer', '–'))}; occlusion is the drop "
                f"in probability under a grey square."), alt="saliency panel", fmt=fmt)
            rows = []
            for m, v in methods.items():
                detail = []
                if "completeness_error" in v:
                    detail.append(f"completeness error {_num(v['completeness_error'], 2)}")
                if "layer" in v:
                    detail.append(f"layer {_e(v['layer'])}")
                if "window" in v:
                    detail.append(f"{v['window']} px square, stride {v['stride']}")
                if "samples" in v:
                    detail.append(f"{v['samples']} samples, noise {v['noise']:g}")
                rows.append([_e(m), _num(v["map"]["top5pct_share"], 2), _e(str(v["map"]["peak_yx"])),
                             _num(v.get("time_s"), 2), "; ".join(detail)])
            body += _table(["method", "share of the map in its top 5% pixels", "peak (y, x)", "time (s)",
                            "settings"], rows, [False, True, False, True, False])
            singles = []
            for m in methods:
                for kind, caption in (("map", "the map in its own units, with colour bar"),
                                      ("overlay", "the image and the map over it")):
                    src = next((p for p in files if p.rsplit("/", 1)[-1].rsplit(".", 1)[0] == f"{m}_{kind}"), None)
                    if src:
                        singles.append(_fig(src, f"{_e(m)}: {caption}", alt=f"{m} {kind}", fmt=fmt))
            if singles:
                body += ('<details><summary>Each method on its own (map with colour bar, overlay)</summary>'
                         f'<div class="grid">{"".join(singles)}</div></details>')
        sections.append(("saliency", "Saliency maps", body))

    # ---- sanity
    if san or "sanity" in errors:
        body = error("sanity")
        if san:
            files = san.get("files", [])
            maps = next((p for p in files if "sanity_maps" in p), None)
            curves = next((p for p in files if "sanity_curves" in p), None)
            body += (f"<p>Adebayo et al. 2018: on a copy of the model the layers are re-initialised one by one from "
                     f"the classifier down (cumulatively) and each map recomputed for the same class. A method that "
                     f"explains what the network learned must change. Rule: {_e(san['verdict_rule'])} (here: by "
                     f"<b>{_e(san['verdict_step'])}</b>).</p>")
            rows = []
            for m, v in san["verdicts"].items():
                label = {True: '<span class="pass">passes</span>', False: '<span class="fail">fails</span>',
                         None: "no verdict (constant map)"}[v["passes"]]
                rows.append([_e(m), label, _num(v.get("spearman_signed_at_verdict_step"), 2),
                             _num(v.get("spearman_abs_at_verdict_step"), 2), _num(v.get("ssim_at_verdict_step"), 2),
                             _e(v.get("decorrelated_at") or "never")])
            body += _table(["method", "verdict", "signed rank corr.", "|map| rank corr.", "SSIM",
                            "decorrelated (< 0.5) at"], rows, [False, False, True, True, True, False])
            if maps:
                body += _fig(maps, "Rows: methods; columns: the original map, then the map after each cascade step "
                                   "(that layer and all above it re-initialised).", alt="sanity maps", fmt=fmt)
            if curves:
                body += _fig(curves, "Similarity to the original map against cascade depth; the dashed line is the "
                                     "pass threshold, the dotted line the verdict step.", alt="sanity curves",
                             fmt=fmt)
        sections.append(("sanity", "Sanity check: cascading randomization", body))

    # ---- occlusion
    if occ or "occlusion" in errors:
        body = error("occlusion")
        if occ:
            mp = occ["min_probability"]
            classes = sorted(occ.get("top_classes", {}).items(), key=lambda kv: -kv[1]["positions"])
            shown = ", ".join(f"{_e(v['name'] or 'class ' + k)} ({v['positions']})" for k, v in classes[:5])
            body += _fig(occ["figure"], (
                f"Zeiler &amp; Fergus Fig. 7: a grey {_xy(occ['window'])} px square slides over the image in steps "
                f"of {_xy(occ['stride'])} px ({occ['positions'][0]}×{occ['positions'][1]} positions, "
                f"{_e(occ['method'])} inference). (b) total activation of {_e(occ['layer'])} map "
                f"{occ['strongest_map']}, the strongest in the unoccluded image; (c) its projection; (d) p("
                f"{_e(occ.get('target_name') or occ['target'])}): {_num(occ['probability_unoccluded'])} unoccluded, "
                f"lowest {_num(mp['value'])}; (e) the most probable class per position: {shown}."),
                alt="occlusion", fmt=fmt)
        sections.append(("occlusion", "Occlusion sensitivity", body))

    # ---- invariance
    inv = s.get("invariance")
    if inv or "invariance" in errors:
        body = error("invariance")
        if inv:
            body += ("<p>Zeiler &amp; Fergus Fig. 5: the image translated, scaled and rotated by each amount; for "
                     "each, the Euclidean distance between the feature vectors of the original and the transformed "
                     "image, divided by the norm of the original's, low in the network and at the last hidden "
                     "layer, and the probability of the class predicted for the original. Pixels from outside the image are the "
                     "dataset mean (grey).</p>")
            body += '<div class="grid">'
            for t in inv["transforms"]:
                p = t["probability"]
                body += _fig(t["file"], (
                    f"<b>{_e(t['transform'])}</b> over {_num(min(t['amounts']))}…{_num(max(t['amounts']))}: "
                    f"distance at {_e(t['first_layer'])} up to {_num(max(t['distance_first']))}, at "
                    f"{_e(t['last_layer'])} up to {_num(max(t['distance_last']))}; "
                    f"p({_e(t.get('target_name') or t['target'])}) {_num(t['probability_original'])} for the "
                    f"original, {_num(min(p))}–{_num(max(p))} across the sweep."),
                    alt=f"invariance {t['transform']}", fmt=fmt)
            body += "</div>"
        sections.append(("invariance", "Invariance: translation, scale, rotation", body))

    # ---- dataset
    if ds or "dataset" in errors:
        body = error("dataset")
        if ds:
            body += (f"<p>One pass over {ds['images']} images of <code>{_e(ds['data'])}</code> "
                     f"({ds['skipped']} unreadable, skipped) at {_num(ds.get('images_per_second'))} images/s: "
                     f"each unit's {ds['top']} strongest activations over the whole set, projected with the "
                     f"{_e(ds['method'])} beside their image patches (Zeiler &amp; Fergus Fig. 2). The figures show "
                     f"the first units of each layer; summary.json lists every unit's winners.</p>")
            for e in ds["layers"]:
                for file in e["files"]:
                    body += _fig(file, (f"<b>{_e(e['layer'])}</b>: units {e['figure_units'][0]}–"
                                        f"{e['figure_units'][-1]} of {e['channels']}, receptive field "
                                        f"{_xy(e['receptive_field'])} px; each row a unit, its top {ds['top']} "
                                        f"best first, activation value and image above each pair."),
                                 alt=f"top-k {e['layer']}", fmt=fmt)
            dead = ds.get("dead_filters")
            if dead:
                rows = [[_e(e["layer"]), _num(e["filters"]), _num(e["dead"]), _pct(e["dead_fraction"]),
                         _e(", ".join(map(str, e["dead_units"][:12])) + (" …" if len(e["dead_units"]) > 12 else "")
                            or "none")]
                        for e in dead["layers"]]
                body += "<h3>Dead filters</h3>" + _table(["layer", "filters", "dead", "dead %", "dead units"], rows,
                                                        [False, True, True, True, False])
                body += _fig(dead["figure"], (
                    f"Per layer, the fraction of positions where each filter fires (&gt; 0) over the dataset. "
                    f"Dead: fires on fewer than {dead['min_firing']:g} of the positions, or its largest activation "
                    f"is at most {dead['min_max']:g} × the layer's largest."), alt="dead filters", fmt=fmt)
        sections.append(("dataset", "Dataset: top activations and dead filters", body))

    # ---- page
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    timing = ", ".join(f"{_e(k)} {_num(v, 3)} s" for k, v in s.get("timings_s", {}).items())
    head = (f"{_e(model)} · {_e(os.path.basename(str(image)) or image)}")
    sub = " · ".join(x for x in (
        f"weights: {_e(weights)}" if weights else "", f"image: <code>{_e(image)}</code>" if image else "",
        f"device: {_e(s.get('device'))}" if s.get("device") else "", f"figures: {_e(fmt)} at {s.get('dpi')} dpi")
        if x)
    body = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{content}</section>' for sid, title, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>vizcnn report · {head}</title><style>{CSS}</style></head><body><main>"
            f"<h1>vizcnn report · {head}</h1><p class=\"sub\">{sub}</p><nav>{nav}</nav>{body}"
            f'<footer>Step times: {timing}. Every number on this page is in <a href="summary.json">summary.json</a>; '
            f"file names there are relative to this folder. Made by <code>vizcnn report</code>.</footer>"
            f"</main></body></html>\n")


__all__ = ["ALL_STEPS", "FORMATS", "SANITY_METHODS", "STEPS", "DATA_UNITS", "StepFolder", "default_layers",
           "model_card", "check_report_options", "write_report", "render_index"]
