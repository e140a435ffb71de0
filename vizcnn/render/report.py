"""``vizcnn report``'s index.html: the report's summary in, one HTML page out (every
number on the page is in summary.json; the figures are linked, not embedded)."""
from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence

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


def _p(text: str) -> str:
    """A paragraph of index.html (``text`` is HTML already)."""
    return f"<p>{text}</p>"


def _class(name, index) -> str:
    return f"“{_e(name)}” (class {index})" if name is not None else f"class {index}"


def _prediction(sal: dict, shipped: dict | None) -> str:
    """The headline's prediction; with learned weights shipped with vizcnn, which classes the
    model knows (a cat photo read as "Bag" by a Fashion-MNIST model is no error)."""
    only = (f" (the model knows only {_e(shipped['dataset'])}'s {shipped['num_classes']} classes)"
            if shipped else "")
    return f"{_class(sal.get('class_name'), sal.get('target'))}, p = {_num(sal.get('probability'))}{only}"


def _card_section(card: dict, fmt: str, weights: str | None = None, shipped: dict | None = None) -> str:
    """The card step's section of index.html; figures in ``fmt``. The published parameter
    count and ImageNet top-1 describe ImageNet's weights: they are shown with those only
    (``shipped``: the card of learned weights shipped with vizcnn, whose own data and
    accuracy are shown instead)."""
    body = ""
    rows = [[_e(c["layer"]), f"<code>{_e(c['module'])}</code>", _e(c["kind"]), _xy(c["kernel"]),
             _xy(c["stride"]), _e(_xy(c["padding"]) if isinstance(c["padding"], list) else c["padding"]),
             _shape(c["output"]), _xy(c["receptive_field"]), _xy(c["jump"]), _num(c["params"])]
            for c in card["convs"]]
    body += _table(["layer", "module", "kind", "kernel", "stride", "padding", "output C×H×W",
                    "receptive field (px)", "jump (px)", "parameters"], rows,
                   [False] * 3 + [True] * 7)
    published = card.get("published_params") and (weights == "imagenet" or card["published_params"] == card["params"])
    facts = [f"input {_shape(card['input_size'])}", f"{_num(card['params'])} trainable parameters"
             + (f" (published: {_num(card['published_params'])})" if published else ""),
             f"{_num(card['conv_params'])} of them in convolutions",
             f"{_flops(card['flops'])} per image (2 per multiply-add)"]
    if card.get("top1") is not None and weights == "imagenet":
        facts.append(f"published ImageNet top-1 {card['top1']}%")
    if shipped:
        acc = shipped.get("accuracy", {})
        facts.append(f"weights {_e(weights)} shipped with vizcnn: trained on {_e(shipped['data'])}, "
                     f"{shipped['num_classes']} classes; held-out top-1 {_num(acc.get('top1'))} on {_e(acc.get('split'))}")
    body += _p(" · ".join(facts) + ". Receptive field: the input pixels one unit of the layer sees; "
               "jump: the distance in input pixels between neighbouring units.")
    return body


def _filters_section(f: dict, fmt: str) -> str:
    """The filters step's section of index.html; figures in ``fmt``."""
    body = ""
    figs = f["figures"]
    af, bands = f["alias_fraction"], f["bands"]
    body += _fig(figs["filters"], (
        f"The {f['filters']} filters of {_e(f['layer'])} (<code>{_e(f['module'])}</code>, "
        f"{f['kernel'][0]}×{f['kernel'][1]}, stride {f['stride'][0]}), each scaled to its own range "
        f"(grey = 0); colour where the layer sees RGB. Dead filters (near-zero or structureless weights: "
        f"a norm under a tenth of the layer's median, or no spatial structure) are marked."), alt="filters", fmt=fmt)
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
    return body


def _deconv_section(dc: dict, fmt: str) -> str:
    """The deconv step's section of index.html; figures in ``fmt``."""
    body = _p(f"For each layer, the {dc['top']} strongest activations in the image (one per channel, at "
              f"its maximum), each projected back to pixels with the {_e(dc['method'])} (Zeiler &amp; Fergus "
              f"2014, Fig. 2) and shown beside the image patch under the unit's receptive field. Labels: "
              f"channel and activation value.")
    for e in dc["layers"]:
        units = ", ".join(f"ch {u['channel']} ({_num(u['value'])}) at ({u['y']}, {u['x']})"
                          for u in e["units"][:3])
        body += _fig(e["file"], (
            f"<b>{_e(e['layer'])}</b> (<code>{_e(e['module'])}</code>): receptive field "
            f"{_xy(e['receptive_field'])} px, units every {_xy(e['stride'])} px. Strongest: {units}."),
            alt=f"deconv {e['layer']}", fmt=fmt)
    return body


def _saliency_section(sal: dict, fmt: str) -> str:
    """The saliency step's section of index.html; figures in ``fmt``."""
    body = ""
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
    return body


def _interval(c) -> str:
    """A sanity interval (mean, lo, hi across images) as ``mean [lo, hi]``; a bare number as itself."""
    if not isinstance(c, dict):
        return _num(c, 2)
    return _num(c.get("mean"), 2) + (f" [{_num(c['lo'], 2)}, {_num(c['hi'], 2)}]" if c.get("lo") is not None else "")


def _sanity_section(san: dict, fmt: str) -> str:
    """The sanity step's section of index.html; figures in ``fmt``."""
    body = ""
    files = san.get("files", [])
    maps = next((p for p in files if "sanity_maps" in p), None)
    curves = next((p for p in files if "sanity_curves" in p), None)
    body += _p(f"Adebayo et al. 2018: on a copy of the model the layers are re-initialised one by one from "
               f"the classifier down (cumulatively) and each map recomputed for the same class. A method that "
               f"explains what the network learned must change. Rule: {_e(san['verdict_rule'])} (here: by "
               f"<b>{_e(san['verdict_step'])}</b>).")
    rows = []
    for m, v in san["verdicts"].items():
        label = {True: '<span class="pass">passes</span>', False: '<span class="fail">fails</span>',
                 None: _e(v.get("verdict", "no verdict"))}[v["passes"]]
        rows.append([_e(m), label, *(_interval(v.get(k)) for k in ("spearman_signed_at_verdict_step",
                                                                    "spearman_abs_at_verdict_step",
                                                                    "ssim_at_verdict_step")),
                     _e(v.get("decorrelated_at") or "never")])
    body += _table(["method", "verdict", "|signed rank corr.|", "|map| rank corr.", "SSIM",
                    "interval below 0.5 at"], rows, [False, False, True, True, True, False])
    if maps:
        body += _fig(maps, "Rows: methods; columns: the original map, then the map after each cascade step "
                           "(that layer and all above it re-initialised).", alt="sanity maps", fmt=fmt)
    if curves:
        body += _fig(curves, "Similarity to the original map against cascade depth; the dashed line is the "
                             "pass threshold, the dotted line the verdict step.", alt="sanity curves",
                     fmt=fmt)
    return body


def _occlusion_section(occ: dict, fmt: str) -> str:
    """The occlusion step's section of index.html; figures in ``fmt``."""
    body = ""
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
    return body


def _invariance_section(inv: dict, fmt: str) -> str:
    """The invariance step's section of index.html; figures in ``fmt``."""
    body = _p("Zeiler &amp; Fergus Fig. 5: the image translated, scaled and rotated by each amount; for "
              "each, the Euclidean distance between the feature vectors of the original and the transformed "
              "image, divided by the norm of the original's, low in the network and at the last hidden "
              "layer, and the probability of the class predicted for the original. Pixels from outside the "
              "image are the dataset mean (grey).")
    for t in inv["transforms"]:  # one a row, at full width: three side by side were too small to read
        p = t["probability"]
        body += _fig(t["file"], (
            f"<b>{_e(t['transform'])}</b> over {_num(min(t['amounts']))}…{_num(max(t['amounts']))}: "
            f"distance at {_e(t['first_layer'])} up to {_num(max(t['distance_first']))}, at "
            f"{_e(t['last_layer'])} up to {_num(max(t['distance_last']))}; "
            f"p({_e(t.get('target_name') or t['target'])}) {_num(t['probability_original'])} for the "
            f"original, {_num(min(p))}–{_num(max(p))} across the sweep."),
            alt=f"invariance {t['transform']}", fmt=fmt)
    return body


def _dataset_section(ds: dict, fmt: str) -> str:
    """The dataset step's section of index.html; figures in ``fmt``."""
    body = _p(f"One pass over {ds['images']} images of <code>{_e(ds['data'])}</code> "
              f"({ds['skipped']} unreadable, skipped) at {_num(ds.get('images_per_second'))} images/s: "
              f"each unit's {ds['top']} strongest activations over the whole set, projected with the "
              f"{_e(ds['method'])} beside their image patches (Zeiler &amp; Fergus Fig. 2). The figures show "
              f"the first units of each layer; summary.json lists every unit's winners.")
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
                    or "none"),
                 "–" if not e.get("dead_weights") else _num(e["dead_weights"]["dead"])]
                for e in dead["layers"]]
        body += "<h3>Dead filters</h3>" + _table(["layer", "filters", "dead (never fire)", "dead %", "dead units",
                                                  "dead filters (near-zero or structureless weights)"], rows,
                                                [False, True, True, True, False, True])
        body += _fig(dead["figure"], (
            f"Per layer, the fraction of positions where each filter fires (&gt; 0) over the dataset. "
            f"Dead (never fire): fires on fewer than {dead['min_firing']:g} of the positions, or its largest activation "
            f"is at most {dead['min_max']:g} × the layer's largest."), alt="dead filters", fmt=fmt)
    return body


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
        keys.append(("prediction", _prediction(sal, s.get("weights_card"))))
    f = s.get("filters")
    if f:
        af = f["alias_fraction"]
        if max(f["stride"]) > 1:
            keys.append((f"{_e(f['layer'])} aliasing",
                         f"median {_pct(af['median'])} of a filter's energy lies beyond the stride-{f['stride'][0]} "
                         f"Nyquist limit and is aliased (white-noise filters: {_pct(af['noise_expected'])})"))
        else:
            keys.append((f"{_e(f['layer'])} aliasing", "none: stride 1 keeps every frequency"))
        dead = f.get("dead_filters") or {}
        keys.append((f"{_e(f['layer'])} filters", f"{f['filters']} filters, {dead.get('dead', '–')} dead "
                                                   f"(near-zero or structureless weights); peak frequency low/mid/high "
                                                   f"{_pct(f['bands']['fractions']['low'])} / "
                                                   f"{_pct(f['bands']['fractions']['mid'])} / "
                                                   f"{_pct(f['bands']['fractions']['high'])}"))
    san = s.get("sanity")
    if san:
        parts = []
        for m, v in san["verdicts"].items():
            label = {True: '<span class="pass">passes</span>', False: '<span class="fail">fails</span>',
                     None: _e(v.get("verdict", "no verdict"))}[v["passes"]]
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
        keys.append(("dead (never fire)", f"{', '.join(parts)} over {ds['images']} images of {_e(ds['data'])}"))
        dead_weights = [f"{_e(e['layer'])} {e['dead_weights']['dead']}/{e['filters']}"
                        for e in ds["dead_filters"]["layers"] if e.get("dead_weights")]
        if dead_weights:
            keys.append(("dead filters (near-zero or structureless weights)", ", ".join(dead_weights)))
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

    dc, inv = s.get("deconv"), s.get("invariance")
    for key, title, data, body_of in (  # a step's section shows its error, if any, and its results
            ("card", "Model card", card,
             lambda data, fmt: _card_section(data, fmt, s.get("weights"), s.get("weights_card"))),
            ("filters", "First-layer filters and their spectra", f, _filters_section),
            ("deconv", "Deconvnet: the strongest activations of each layer", dc, _deconv_section),
            ("saliency", "Saliency maps", sal, _saliency_section),
            ("sanity", "Sanity check: cascading randomization", san, _sanity_section),
            ("occlusion", "Occlusion sensitivity", occ, _occlusion_section),
            ("invariance", "Invariance: translation, scale, rotation", inv, _invariance_section),
            ("dataset", "Dataset: top activations and dead filters", ds, _dataset_section),
    ):
        if data or key in errors:
            sections.append((key, title, error(key) + (body_of(data, fmt) if data else "")))

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


__all__ = ["render_index"]
