"""``vizcnn atlas`` and ``vizcnn.atlas``: every unit of a model's conv layers in one static site.

Four stages, each reported on ``log`` (the CLI: stderr) with its wall time:

1. **pass**: one streamed pass over the data (:func:`vizcnn.api.scan`): each unit's
   top-k, firing statistics and dead flag (``FilterStats.dead``, the definition
   ``vizcnn dead-filters`` uses), and from the per-image maxima
   (:class:`vizcnn.methods.atlas.UnitMaxima`) its top classes and most similar units.
   Data-parallel under ``torchrun`` like ``vizcnn topk``; rank 0 does the rest.
2. **projections**: every winner's deconvnet projection, cropped to its receptive
   field, batched across units (:func:`vizcnn.methods.atlas.project_winners_batched`).
3. **optimisation**: one optimised stimulus per unit (:mod:`vizcnn.methods.stimulus`).
4. **rendering**: the pages (:mod:`vizcnn.render.atlas`) and small JPEG images.

Resumable: the pass's result and each layer's projections and stimuli are saved, as
each completes, in ``--out/state`` (:meth:`vizcnn.io.output.OutputDir.keep`: written
directly, kept when a run is interrupted, carried over by every later run). A rerun with
the same model (weights fingerprinted), data (its name and image paths; files changed in
place are not noticed) and options continues from what is there; a state made with other
settings is recomputed. The site itself is published in one
step (the output folder's transaction): a killed run leaves the previous atlas as it was.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..api import scan
from ..core.errors import BadArgumentError, BadInputError
from ..core.layers import conv_layers, geometry_key, layer_geometry, resolve_layer
from ..core.progress import ProgressFn
from ..io.imageio import read_image, safe_filename, write_atomic, write_image, write_json
from ..io.opencv import cv2
from ..io.sources import ImageSource, load
from ..methods.atlas import NEIGHBOURS, UnitMaxima, project_winners_batched
from ..methods.scan import MIN_FIRING, MIN_MAX, FilterStats, TopK, parse_units, rank_and_world
from ..methods.stimulus import is_grey, optimise_units
from ..models.cards import card_json
from .dataset import winner_records
from ..render.atlas import CSS, JS, index_page, layer_page, unit_page
from ..render.common import as_display

STATE = "state"
THUMB = 48
QUALITY = 85


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for name, t in list(model.state_dict().items()):
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save(path: Path, obj: dict) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def _load(path: Path, key: str) -> dict | None:
    """The state saved at ``path`` when it was made with ``key``, else None."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 — a damaged state file is recomputed, never fatal
        return None
    return obj if isinstance(obj, dict) and obj.get("key") == key else None


# --------------------------------------------------------------------------- stage 1: the pass


def _labels(source: ImageSource) -> tuple[torch.Tensor | None, list[str] | None]:
    labels = [source.label(i) for i in range(len(source))]
    known = [lab for lab in labels if lab is not None]
    if not known:
        return None, None
    classes = list(source.classes) if source.classes else [str(c) for c in range(max(known) + 1)]
    return torch.tensor([-1 if lab is None else lab for lab in labels], dtype=torch.long), classes


def _run_pass(model, source, spec, layers, top, batch_size, num_workers, geometry, progress) -> dict | None:
    from ..core.state import model_device

    labels, classes = _labels(source)
    device = model_device(model)
    maxima = [UnitMaxima(n, geometry[geometry_key(model, n)].shape[0], device, labels=labels,
                         classes=len(classes or ())) for n in layers]
    result = scan(model, source, spec, topk_layers=layers, stats_layers=layers, top=top, batch_size=batch_size,
                  num_workers=num_workers, geometry=geometry, progress=progress, observers=maxima)
    if result.rank != 0:
        return None
    state: dict = {"images": result.images, "seconds": result.seconds, "world_size": result.world_size,
                   "skipped": [[s.index, s.path, s.reason] for s in result.skipped], "classes": classes or [],
                   "layers": {}}
    for name, m in zip(layers, maxima):
        tk, st = result.topk[name].cpu(), result.stats[name].cpu()
        sim, corr = m.similar(NEIGHBOURS)
        entry = {"value": tk.value, "image": tk.image, "y": tk.y, "x": tk.x, "positions": st.positions,
                 "fires": st.fires, "total": st.total, "max": st.max, "conv": st.conv or "",
                 "similar": sim, "correlation": corr}
        if st.weight_norm is not None:
            entry["weight_norm"] = st.weight_norm
        if classes:
            entry["class_index"], entry["class_mean"] = m.top_classes(NEIGHBOURS)
        state["layers"][name] = entry
    return state


def _topk(entry: dict) -> TopK:
    return TopK(entry["value"], entry["image"], entry["y"], entry["x"])


def _stats(entry: dict) -> FilterStats:
    return FilterStats(entry["positions"], entry["fires"], entry["total"], entry["max"], entry.get("weight_norm"),
                       entry["conv"] or None)


# --------------------------------------------------------------------------- the stages


def _project_layer(model, source, spec, name, entry, units, info, method, folder: Path, progress) -> dict:
    """Stage 2 for one layer: the projections as JPEG files in ``folder``; returns
    {"u-r": [file name, box]}."""
    def read(i: int):
        try:
            return load(source, i, spec)[1]
        except BadInputError:
            return None

    found = project_winners_batched(model, read, name, _topk(entry), units, info, method=method,
                                    progress=progress, what=f"projecting {name}'s winners (batches)")
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for (u, r), (proj, box) in found.items():
        file = f"u{u}_r{r}.jpg"
        write_image(folder / file, as_display(proj), quality=QUALITY)
        files[f"{u}-{r}"] = [file, list(box)]
    return files


def _levels(images: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def _thumbnail(image: np.ndarray, side: int = THUMB) -> np.ndarray:
    """An H×W×3 uint8 image resized to side×side (area averaging; nearest when enlarging)."""
    h, w = image.shape[:2]
    mode = cv2.INTER_AREA if h >= side and w >= side else cv2.INTER_NEAREST
    return cv2.resize(np.ascontiguousarray(image), (side, side), interpolation=mode)


def _put(out, name: str, source: Path) -> None:
    """File ``source`` (in the kept state) as ``name`` of this run: a hard link, else a copy."""
    target = out.path(name)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# --------------------------------------------------------------------------- the writer


def write_atlas(out, model: nn.Module, model_name: str, source: ImageSource, spec, *,
                layers: Sequence[str] | None = None, units: str | Sequence[int] | None = None, top: int = 9,
                optimize: bool = True, optimize_steps: int = 128, method: str = "deconvnet", seed: int = 0,
                grey: bool | None = None, batch_size: int = 32, num_workers: int | None = None,
                min_firing: float = MIN_FIRING, min_max: float = MIN_MAX, extra: dict | None = None,
                progress: ProgressFn | None = None, log: Callable[[str], None] | None = None) -> dict | None:
    """``vizcnn atlas``: the four stages (module docstring) into ``out`` (an OutputDir on
    rank 0; None on the other ranks of a torchrun, which only take part in the pass).

    layers: default every conv layer (:func:`vizcnn.core.layers.conv_layers`). units:
    which units of each layer get pages (``"0-15"``, a list, default all); the pass
    covers every unit. grey: optimise grey stimuli (default: the spec's input is grey,
    :func:`vizcnn.methods.stimulus.is_grey`). Returns the summary on rank 0, else None.
    """
    say = log or (lambda _msg: None)
    layers = list(dict.fromkeys(layers or conv_layers(model)))
    for name in layers:
        resolve_layer(model, name)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise BadArgumentError(f"top must be a positive integer, got {top!r}")
    if optimize and (isinstance(optimize_steps, bool) or not isinstance(optimize_steps, int) or optimize_steps < 1):
        raise BadArgumentError(f"optimisation steps must be a positive integer, got {optimize_steps!r}")
    input_size = tuple(spec.input_size)
    geometry = layer_geometry(model, input_size)
    infos = {n: geometry[geometry_key(model, n)] for n in layers}
    for n, info in infos.items():
        if len(info.shape) != 3:
            raise BadArgumentError(f"layer {n!r} gives outputs of shape {info.shape}; the atlas needs conv layers "
                                   "(C, H, W)")
    chosen = {n: parse_units(units, infos[n].shape[0]) for n in layers}
    grey = is_grey(spec) if grey is None else bool(grey)
    rank, world = rank_and_world(None)
    paths = hashlib.sha256("\n".join(source.describe(i) for i in range(len(source))).encode()).hexdigest()
    base = {"model": model_name, "weights": fingerprint(model), "data": source.name, "n": len(source),
            "paths": paths, "input": list(input_size), "mean": list(spec.mean), "std": list(spec.std),
            "layers": layers, "top": top}
    pass_key = _key(base)
    # read where a previous run kept its state; the folder is made (kept) only once a pass has
    # succeeded, so a run that fails on its data leaves nothing behind
    state_dir = out.final / STATE if out is not None else None
    timings: dict[str, float] = {}

    # ---- stage 1: the pass (every rank takes part unless rank 0 has it saved)
    t0 = time.perf_counter()
    saved = _load(state_dir / "pass.pt", pass_key) if state_dir is not None else None
    if world > 1:
        import torch.distributed as dist

        flag = [saved is not None]
        dist.broadcast_object_list(flag, src=0)
        have = flag[0]
    else:
        have = saved is not None
    if have:
        if rank != 0:  # rank 0 has the pass saved: nothing is left for the others
            return None
        say("atlas: [1/4] data pass: resumed from the saved state")
        state, state_dir = saved, out.keep(STATE)
    else:
        say(f"atlas: [1/4] data pass over {len(source)} images, {len(layers)} layer(s)")
        state = _run_pass(model, source, spec, layers, top, batch_size, num_workers, geometry, progress)
        if rank != 0:
            return None
        state["key"] = pass_key
        state_dir = out.keep(STATE)
        _save(state_dir / "pass.pt", state)
    timings["pass"] = time.perf_counter() - t0
    say(f"atlas: [1/4] data pass done in {timings['pass']:.1f} s")

    # ---- stage 2: projections, layer by layer
    t0 = time.perf_counter()
    proj_files: dict[str, dict] = {}
    for i, name in enumerate(layers, 1):
        key = _key({**base, "stage": "projections", "layer": name, "units": chosen[name], "method": method})
        folder = state_dir / "projections" / safe_filename(name)
        done = folder / "done.json"
        try:
            record = json.loads(done.read_text()) if done.is_file() else None
        except (OSError, ValueError):
            record = None
        if record is not None and record.get("key") == key:
            say(f"atlas: [2/4] projections {name} ({i}/{len(layers)}): resumed")
        else:
            say(f"atlas: [2/4] projections {name} ({i}/{len(layers)}): {len(chosen[name])} units")
            if folder.exists():
                shutil.rmtree(folder)
            files = _project_layer(model, source, spec, name, state["layers"][name], chosen[name], infos[name],
                                   method, folder, progress)
            record = {"key": key, "files": files}
            write_json(done, record)
        proj_files[name] = record["files"]
    timings["projections"] = time.perf_counter() - t0
    say(f"atlas: [2/4] projections done in {timings['projections']:.1f} s")

    # ---- stage 3: optimised stimuli, layer by layer
    t0 = time.perf_counter()
    stimuli: dict[str, dict] = {}
    if optimize:
        for i, name in enumerate(layers, 1):
            key = _key({**base, "stage": "stimuli", "layer": name, "units": chosen[name], "steps": optimize_steps,
                        "seed": seed, "grey": grey})
            path = state_dir / "stimuli" / f"{safe_filename(name)}.pt"
            record = _load(path, key)
            if record is not None:
                say(f"atlas: [3/4] optimisation {name} ({i}/{len(layers)}): resumed")
            else:
                say(f"atlas: [3/4] optimisation {name} ({i}/{len(layers)}): {len(chosen[name])} units × "
                    f"{optimize_steps} steps")
                s = optimise_units(model, name, chosen[name], spec, steps=optimize_steps, seed=seed, grey=grey,
                                   progress=progress, what=f"optimising {name}")
                record = {"key": key, "units": torch.tensor(s.units, dtype=torch.long),
                          "images": torch.from_numpy(_levels(s.images)), "activation": s.activation}
                path.parent.mkdir(parents=True, exist_ok=True)
                _save(path, record)
            stimuli[name] = record
    timings["optimisation"] = time.perf_counter() - t0
    say(f"atlas: [3/4] optimisation {'done' if optimize else 'skipped'} in {timings['optimisation']:.1f} s")

    # ---- stage 4: the site
    t0 = time.perf_counter()
    say("atlas: [4/4] rendering")
    summary = _render(out, model, model_name, source, spec, state, layers, chosen, infos, proj_files, stimuli,
                      state_dir, weights=(extra or {}).get("weights"), top=top, method=method, optimize=optimize,
                      optimize_steps=optimize_steps,
                      min_firing=min_firing, min_max=min_max, progress=progress)
    timings["rendering"] = time.perf_counter() - t0
    say(f"atlas: [4/4] rendering done in {timings['rendering']:.1f} s")
    summary.update({**(extra or {}), "seconds": {k: round(v, 3) for k, v in timings.items()}, "grey_stimuli": grey,
                    "seed": seed, "batch_size": batch_size})
    return out.finish(summary)


def _render(out, model, model_name, source, spec, state, layers, chosen, infos, proj_files, stimuli, state_dir, *,
            weights, top, method, optimize, optimize_steps, min_firing, min_max, progress) -> dict:
    _, h, w = spec.input_size
    classes = state["classes"]
    data_files: dict[int, str] = {}

    def data_image(i: int) -> str | None:
        if i not in data_files:
            try:
                shown = load(source, i, spec)[0]
            except BadInputError:
                return None
            data_files[i] = f"img/data/{i}.jpg"
            write_image(out.path(data_files[i]), _rgb(shown), quality=QUALITY)
        return data_files[i]

    site_layers = []
    for name in layers:
        entry, info = state["layers"][name], infos[name]
        tk, st = _topk(entry).cpu(), _stats(entry)
        dead = st.dead(min_firing, min_max)
        firing, mean = st.firing.tolist(), st.mean.tolist()
        norms = entry["weight_norm"].tolist() if "weight_norm" in entry else None
        stim = stimuli.get(name)
        stim_row = {int(u): j for j, u in enumerate(stim["units"].tolist())} if stim is not None else {}
        if stim is not None and len(stim_row):
            top1 = tk.value[:, 0].clamp_min(1e-12)
            relative = stim["activation"] / top1[None, :]
            live = tk.value[:, 0] > 0  # units that never fire on the data have no scale to compare with
        safe = safe_filename(name)
        page_of = {u: f"units/{safe}-{u}.html" for u in chosen[name]}
        unit_rows = []
        for u in chosen[name]:
            winners = winner_records(tk, u, lambda y, x: info.box(y, x, h, w), source, classes)
            for win in winners:
                r = win["rank"]
                rec = proj_files[name].get(f"{u}-{r}")
                projection = None
                if rec is not None:
                    projection = f"img/{safe}/u{u}_r{r}.jpg"
                    _put(out, projection, state_dir / "projections" / safe / rec[0])
                win.update(image_file=data_image(win["image"]), projection=projection)
            winners = [win for win in winners if win["image_file"] is not None]
            row = {"unit": u, "dead": bool(dead[u]), "firing": firing[u], "mean": mean[u], "max": float(st.max[u]),
                   "weight_norm": None if norms is None else norms[u], "winners": winners, "page": page_of[u]}
            if classes and "class_index" in entry:
                row["classes"] = [{"class": classes[int(c)], "mean": float(m)}
                                  for c, m in zip(entry["class_index"][u].tolist(), entry["class_mean"][u].tolist())
                                  if m == m]
            row["similar"] = [{"unit": int(v), "correlation": float(c),
                               "page": f"units/{safe}-{int(v)}.html" if int(v) in page_of else None}
                              for v, c in zip(entry["similar"][u].tolist(), entry["correlation"][u].tolist())
                              if v >= 0]
            thumb_src = None
            if u in stim_row:
                j = stim_row[u]
                image = _rgb(stim["images"][j].numpy())
                file = f"img/{safe}/u{u}_stimulus.jpg"
                write_image(out.path(file), image, quality=QUALITY)
                values = stim["activation"][j]
                median = float(tk.value[u][tk.image[u] >= 0].median()) if (tk.image[u] >= 0).any() else 0.0
                rel = relative[j]
                row["stimulus"] = {"file": file, "value": float(values[u]), "steps": optimize_steps,
                                   "vs_median_topk": float(values[u]) / median if median > 0 else None,
                                   "rank": int(((rel > rel[u]) & live).sum()) if bool(live[u]) else None,
                                   "live_units": int(live.sum())}
                thumb_src = image
            elif winners and winners[0]["projection"]:
                thumb_src = _levels(read_image(out.root / winners[0]["projection"]))
            thumb = f"img/{safe}/t{u}.jpg"
            write_image(out.path(thumb), _thumbnail(thumb_src) if thumb_src is not None else
                        np.full((THUMB, THUMB, 3), 128, np.uint8), quality=QUALITY)
            row["thumb"] = thumb
            unit_rows.append(row)
        site_layers.append({"layer": name, "module": info.path, "channels": info.shape[0],
                            "receptive_field": list(info.rf), "stride": list(info.jump),
                            "page": f"layers/{safe}.html", "dead": int(dead.sum()),
                            "dead_units": [i for i in range(len(dead)) if dead[i]], "units": unit_rows})
    card = card_json(model, model_name, tuple(spec.input_size))
    site = {"model": model_name, "weights": weights, "data": source.name, "input_size": list(spec.input_size),
            "top": top, "method": method, "optimize": optimize,
            "optimize_steps": optimize_steps if optimize else None,
            "images": state["images"], "skipped": len(state["skipped"]),
            "skipped_images": [{"index": i, "path": p, "reason": r} for i, p, r in state["skipped"]],
            "pass_seconds": round(state["seconds"], 3), "world_size": state["world_size"],
            "classes": classes or None, "min_firing": min_firing, "min_max": min_max,
            "card": card, "layers": site_layers}
    write_atomic(out.path("atlas.css"), CSS.encode())
    write_atomic(out.path("atlas.js"), JS.encode())
    pages = [("index.html", lambda: index_page(site))]
    for layer in site_layers:
        pages.append((layer["page"], lambda layer=layer: layer_page(site, layer)))
        rows = layer["units"]
        for j, u in enumerate(rows):
            pages.append((u["page"], lambda layer=layer, j=j, rows=rows: unit_page(
                site, layer, rows[j], rows[j - 1] if j > 0 else None, rows[j + 1] if j + 1 < len(rows) else None)))
    for n, (file, make) in enumerate(pages):
        write_atomic(out.path(file), make().encode("utf-8"))
        if progress is not None and (n % 64 == 0 or n == len(pages) - 1):
            progress(n + 1, len(pages), "writing pages")
    return site


def atlas(model: nn.Module | str, data: str | os.PathLike | ImageSource, out: str | os.PathLike, *,
          spec=None, weights: str = "default", layers: Sequence[str] | None = None,
          units: str | Sequence[int] | None = None, top: int = 9, optimize: bool = True, optimize_steps: int = 128,
          method: str = "deconvnet", seed: int = 0, grey: bool | None = None, batch_size: int = 32,
          num_workers: int | None = 0, limit: int | None = None, force: bool = False,
          progress: ProgressFn | None = None, log: Callable[[str], None] | None = None) -> dict:
    """An atlas of every unit as a static site in folder ``out`` (see :mod:`vizcnn.writers.atlas`).

    model: a zoo name (loaded with ``weights``; its spec is the registry's) or your own
    ``nn.Module`` with ``spec`` (anything with ``input_size`` (C, H, W), ``mean`` and
    ``std``). data: what ``vizcnn topk`` takes as DATA, or an ImageSource. Returns the
    summary (also in ``out/summary.json``); open ``out/index.html``.
    """
    from ..io.output import OutputDir
    from ..io.sources import open_data
    from ..models import get_spec, load_model

    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        if weights == "default":
            weights = "imagenet" if get_spec(model).tv_name else "random"
        spec = spec or get_spec(model, weights)
        model = load_model(model, weights, seed=seed)
    elif spec is None:
        raise BadArgumentError("atlas of your own model: pass spec (input_size, mean, std)")
    source = data if isinstance(data, ImageSource) else open_data(data, limit=limit)
    folder = OutputDir(out, "atlas", force=force)
    try:
        return write_atlas(folder, model, name, source, spec, layers=layers, units=units, top=top, optimize=optimize,
                           optimize_steps=optimize_steps, method=method, seed=seed, grey=grey, batch_size=batch_size,
                           num_workers=num_workers, extra={"weights": None if weights == "default" else str(weights)},
                           progress=progress, log=log)
    finally:
        folder.abort()  # a no-op after finish


__all__ = ["write_atlas", "atlas", "fingerprint"]
