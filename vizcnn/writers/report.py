"""``vizcnn report``: every analysis of one image in one folder, with an index.html.

The report runs the library's own writers, one after another, each into a subfolder of
the report folder, and collects what they return:

============  ============  ====================================================================
step          subfolder     what it writes (``write_*``)
============  ============  ====================================================================
card          (none)        the model card: per conv layer kernel, stride, output, receptive
                            field, parameters; totals (parameters, FLOPs)
filters       filters/      the first convolution's filters, their spectra and aliasing
                            (``vizcnn.writers.filters``)
deconv        deconv/       the top-``top`` activations of each layer in the image, projected
                            with the deconvnet (``vizcnn.writers.deconv``)
saliency      saliency/     every saliency method side by side, and each map on its own
                            (``vizcnn.writers.saliency``)
sanity        sanity/       cascading randomization of the layers (``vizcnn.writers.sanity``)
occlusion     occlusion/    Zeiler & Fergus Fig. 7 (``vizcnn.writers.occlusion``)
invariance    invariance/   Zeiler & Fergus Fig. 5: feature distance and class probability under
                            translation, scale and rotation
                            (``vizcnn.writers.invariance``)
dataset       dataset/      with ``data``: the top-``top`` activations of each unit over the
                            dataset (Fig. 2) and the dead-filter statistics, in one pass
                            (``vizcnn.writers.dataset``)
============  ============  ====================================================================

One ``summary.json`` in the report folder holds every step's summary under the step's
key, so every number index.html shows is in it; every file name in it is relative to
the report folder. Figures come in one format (``fmt``: png, pdf or svg) at one
``dpi``. The steps never change the model (each one preserves it), and a step that fails
with a vizcnn error is recorded (``errors``) and shown, without stopping the others.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import ActivationError, BadArgumentError, BadInputError, VizcnnError
from ..core.layers import default_layers, resolve_layer
from ..core.progress import ProgressFn
from ..io.imageio import figure_dpi, write_atomic, write_png
from ..io.output import OutputDir
from ..methods.saliency import METHODS
from ..models.cards import card_json
from ..models.registry import get_spec
from ..models.shipped import shipped_weights
from ..render.common import model_title
from ..render.report import render_index
from .dataset import write_topk
from .deconv import write_deconv
from ..methods.spectra import grey_weights
from .filters import write_filters
from .invariance import write_invariance
from .occlusion import write_occlusion
from .saliency import write_saliency
from .sanity import write_sanity

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
                 progress: ProgressFn | None = None) -> dict:
    """``vizcnn report``: runs every step (see the module docstring) into ``out``, writes
    input.png, index.html and summary.json, and returns the summary.

    image: the H×W×C display image in [0, 1] the model sees; x: its normalised tensor
    (1, C, H, W) on the model's device. spec: the model's ModelSpec (default: looked up
    by ``model_name``; needed for ``data``). layers: for deconv and the dataset grids
    (default :func:`default_layers`). data: a ``vizcnn.io.sources.ImageSource`` or None.
    names: class names or None. steps: integrated-gradients nodes and SmoothGrad samples.
    extra: facts recorded in summary.json and shown (weights, image, device, seed).
    progress(i, n, title) is called before step i (1-based) of n.
    """
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
    card = shipped_weights(model_name).get(str(extra.get("weights")))
    if card is not None:  # learned weights shipped with vizcnn: their own classes, data and accuracy
        summary["weights_card"] = {"data": card["data"], "dataset": card["data"].split()[0],
                                   "num_classes": card["num_classes"], "accuracy": card["accuracy"]}
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
    title = model_title(model_name, (extra or {}).get("weights"))  # "alexnet (random weights)": figures say so
    grey = grey_weights(model_name, (extra or {}).get("weights"))  # grey-trained: measure conv1's channel sum

    def plain(summary: dict) -> dict:
        if summary.get("model") == title:
            summary["model"] = model_name
        return summary

    def card():
        return card_json(model, model_name, tuple(x.shape[1:]), spec)

    def filters():
        return plain(write_filters(StepFolder(out, "filters", fmt), model, title, grey=grey))

    def deconv():
        return plain(write_deconv(StepFolder(out, "deconv", fmt), model, title, image, x, layers=layers, top=top))

    def saliency():
        return write_saliency(StepFolder(out, "saliency", fmt), model, model_name, image, x, methods=METHODS,
                              names=names, extra=extra, steps=steps, samples=steps)

    def sanity():
        return write_sanity(StepFolder(out, "sanity", fmt), model, model_name, image, x, methods=sanity_methods,
                            names=names, extra=extra, steps=steps, samples=steps)

    def occlusion():
        return plain(write_occlusion(StepFolder(out, "occlusion", fmt), model, title, image, x, class_names=names))

    def invariance():
        return plain(write_invariance(StepFolder(out, "invariance", fmt), model, title, x, mean=spec.mean,
                                      std=spec.std, class_names=names, batch_size=batch_size))

    def dataset():
        return plain(write_topk(StepFolder(out, "dataset", fmt), model, title, data, spec, layers=layers, top=top,
                                dead_filters=True, page_units=data_units, batch_size=batch_size,
                                num_workers=num_workers, grey=grey))

    return {"card": card, "filters": filters, "deconv": deconv, "saliency": saliency, "sanity": sanity,
            "occlusion": occlusion, "invariance": invariance, "dataset": dataset}


# --------------------------------------------------------------------------- index.html


__all__ = ["ALL_STEPS", "FORMATS", "SANITY_METHODS", "STEPS", "DATA_UNITS", "StepFolder", "check_report_options",
           "write_report"]
