"""The atlas site's pages: plain data in (what summary.json holds), HTML strings out.

Static files only, readable from ``file://``: every link and image is a relative path
inside the site, the style sheet and the one small script (the index's filter box) are
files of the site, nothing is fetched from elsewhere. Every name that comes from the
model, the data or the user (layers, classes, paths) is HTML-escaped.

Layout (paths relative to the site's root)::

    index.html              the model card; each layer a strip of unit thumbnails
    layers/LAYER.html       one page per layer: every unit with its numbers
    units/LAYER-U.html      one page per unit
    img/...                 thumbnails, dataset images, projections, stimuli
    atlas.css, atlas.js
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
       margin: 0; background: #f4f4f2; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 40px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 26px 0 8px; }
a { color: #1a5fb4; } p.sub { color: #555; margin: 0 0 10px; }
nav { margin: 6px 0 14px; display: flex; gap: 16px; flex-wrap: wrap; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid #e3e3df; padding: 3px 9px; text-align: left; }
th { background: #f4f4f2; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.strip { display: flex; flex-wrap: wrap; gap: 3px; margin: 4px 0 10px; }
.unit { display: inline-block; text-decoration: none; color: #333; font-size: 10px; text-align: center; width: 50px; }
.unit img { width: 48px; height: 48px; display: block; border: 1px solid #ccc; image-rendering: pixelated; }
.unit.dead img { filter: grayscale(1); opacity: .3; } .unit.dead { color: #aaa; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { width: 150px; font-size: 12px; } .card img { width: 144px; height: 144px; image-rendering: pixelated; }
.card.dead img { filter: grayscale(1); opacity: .3; }
.wins { display: flex; flex-wrap: wrap; gap: 12px; }
.win { font-size: 12px; width: 200px; }
.pair { display: flex; gap: 4px; align-items: flex-start; }
.frame { position: relative; width: 96px; height: 96px; }
.frame img, .proj img { width: 96px; height: 96px; image-rendering: pixelated; display: block; }
.proj img { object-fit: contain; background: #808080; }
.rf { position: absolute; border: 2px solid #e01b24; box-sizing: border-box; pointer-events: none; }
.stim img { width: 192px; height: 192px; image-rendering: pixelated; border: 1px solid #ccc; }
.top { display: flex; gap: 30px; flex-wrap: wrap; align-items: flex-start; }
.dead-badge { background: #c01c28; color: #fff; padding: 1px 6px; border-radius: 3px; font-size: 12px; }
#filter { font-size: 15px; padding: 4px 8px; width: 320px; } #count { color: #555; margin-left: 10px; }
.layer[hidden], .unit[hidden] { display: none; }
footer { margin-top: 30px; font-size: 12px; color: #555; }
"""

#: The index's filter: tokens (space separated) must all match; a number matches the unit
#: number, "dead"/"alive" the status, any other word a substring of the unit's top class.
#: ``index.html#q=dead`` opens with that filter.
JS = r"""
(function () {
  var box = document.getElementById("filter"), count = document.getElementById("count");
  var units = Array.prototype.slice.call(document.querySelectorAll(".unit"));
  var layers = Array.prototype.slice.call(document.querySelectorAll(".layer"));
  function match(el, tokens) {
    for (var i = 0; i < tokens.length; i++) {
      var t = tokens[i];
      if (/^\d+$/.test(t)) { if (el.dataset.unit !== String(parseInt(t, 10))) return false; }
      else if (t === "dead" || t === "alive") { if ((el.dataset.dead === "1") !== (t === "dead")) return false; }
      else if ((el.dataset.cls || "").toLowerCase().indexOf(t) < 0) return false;
    }
    return true;
  }
  function apply() {
    var tokens = box.value.toLowerCase().split(/\s+/).filter(function (t) { return t.length > 0; });
    var shown = 0;
    units.forEach(function (el) { var ok = match(el, tokens); el.hidden = !ok; if (ok) shown++; });
    layers.forEach(function (l) { l.hidden = l.querySelectorAll(".unit:not([hidden])").length === 0; });
    count.textContent = shown + " of " + units.length + " units";
    document.body.dataset.shown = String(shown);
  }
  box.addEventListener("input", apply);
  var m = /[#&]q=([^&]*)/.exec(location.hash);
  if (m) box.value = decodeURIComponent(m[1].replace(/\+/g, " "));
  apply();
})();
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _n(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    text = f"{float(v):.{digits}g}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _page(title: str, body: str, root: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><link rel="stylesheet" href="{root}atlas.css"></head>\n'
            f'<body><main>\n{body}\n<footer>Made by vizcnn atlas. Every number is also in '
            f'<a href="{root}summary.json">summary.json</a>.</footer></main></body></html>\n')


def _thumb(u: dict, root: str, layer: str) -> str:
    dead = " dead" if u["dead"] else ""
    cls = u["classes"][0]["class"] if u.get("classes") else ""
    label = f"{layer} unit {u['unit']}" + (" (dead)" if u["dead"] else "") + (f", top class {cls}" if cls else "")
    return (f'<a class="unit{dead}" href="{root}{_e(u["page"])}" data-unit="{u["unit"]}" '
            f'data-dead="{int(u["dead"])}" data-cls="{_e(cls)}" title="{_e(label)}">'
            f'<img src="{root}{_e(u["thumb"])}" alt="{_e(label)}" loading="lazy" width="48" height="48">'
            f'{u["unit"]}</a>')


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i < len(numeric) and numeric[i] else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def index_page(site: dict) -> str:
    """index.html: the model card, the pass, and each layer as a strip of unit thumbnails
    (dead units greyed) under a filter box. ``site``: the summary (see the writer)."""
    card = site["card"]
    convs = _table(["layer", "module", "kernel", "stride", "output", "receptive field (px)", "params"],
                   [[_e(c["layer"]), _e(c["module"]), _e("×".join(map(str, c["kernel"]))),
                     _e("×".join(map(str, c["stride"]))), _e("×".join(map(str, c["output"]))),
                     _e("×".join(map(str, c["receptive_field"]))), _n(c["params"])] for c in card["convs"]],
                   [False, False, False, False, False, False, True])
    facts = _table(["", ""], [
        ["model", _e(site["model"])], ["weights", _e(site.get("weights") or "–")],
        ["input", _e("×".join(map(str, site["input_size"])))], ["parameters", _n(card["params"])],
        ["GFLOPs per image", _n(card["gflops"], 4)], ["data", _e(site["data"])],
        ["images", f"{_n(site['images'])} ({_n(site['skipped'])} skipped)"], ["top-k", _n(site["top"])],
        ["projections", _e(site["method"])],
        ["optimised stimuli", _e(f"{site['optimize_steps']} steps" if site["optimize"] else "not computed")]])
    strips = []
    for layer in site["layers"]:
        thumbs = "".join(_thumb(u, "", layer["layer"]) for u in layer["units"])
        strips.append(f'<section class="layer" data-layer="{_e(layer["layer"])}"><h2>'
                      f'<a href="{_e(layer["page"])}">{_e(layer["layer"])}</a> '
                      f'<small>{len(layer["units"])} of {layer["channels"]} units, {layer["dead"]} dead in the '
                      f'layer</small></h2>'
                      f'<div class="strip">{thumbs}</div></section>')
    body = (f"<h1>{_e(site['model'])} atlas</h1>"
            f"<p class=\"sub\">Every unit of {len(site['layers'])} layer(s): its strongest images in "
            f"{_e(site['data'])}, their {_e(site['method'])} projections"
            f"{', an optimised stimulus' if site['optimize'] else ''} and its statistics. "
            f"Thumbnails show the {'optimised stimulus' if site['optimize'] else 'strongest projection'}; "
            f"dead units are greyed.</p>"
            f"<div class=\"top\"><div>{facts}</div><div>{convs}</div></div>"
            f"<h2>Units</h2><p><input id=\"filter\" type=\"search\" placeholder=\"unit number, dead, alive or class\" "
            f"aria-label=\"filter units\"><span id=\"count\"></span></p>"
            + "".join(strips) + '<script src="atlas.js"></script>')
    return _page(f"{site['model']} atlas", body, "")


def layer_page(site: dict, layer: dict) -> str:
    """layers/LAYER.html: every unit of one layer, larger, with its numbers."""
    cards = []
    for u in layer["units"]:
        cls = ", ".join(_e(c["class"]) for c in u.get("classes", [])[:2])
        picture = (u.get("stimulus") or {}).get("file") or next(
            (w["projection"] for w in u["winners"] if w.get("projection")), None) or u["thumb"]
        cards.append(f'<div class="card{" dead" if u["dead"] else ""}"><a href="../{_e(u["page"])}">'
                     f'<img src="../{_e(picture)}" alt="{_e(layer["layer"])} unit {u["unit"]}" loading="lazy" '
                     f'width="144" height="144"></a><br><a href="../{_e(u["page"])}">unit {u["unit"]}</a>'
                     f'{" <span class=dead-badge>dead</span>" if u["dead"] else ""}<br>max {_n(u["max"])} · '
                     f'fires {_n(100 * u["firing"], 3)}%{"<br>" + cls if cls else ""}</div>')
    names = [entry["layer"] for entry in site["layers"]]
    i = names.index(layer["layer"])
    links = ['<a href="../index.html">index</a>']
    if i > 0:
        links.append(f'<a href="../{_e(site["layers"][i - 1]["page"])}">← {_e(names[i - 1])}</a>')
    if i + 1 < len(names):
        links.append(f'<a href="../{_e(site["layers"][i + 1]["page"])}">{_e(names[i + 1])} →</a>')
    rf = _e('×'.join(map(str, layer['receptive_field'])))
    info = (f"{len(layer['units'])} of {layer['channels']} units · receptive field {rf} px · "
            f"stride {_e('×'.join(map(str, layer['stride'])))} px · {layer['dead']} dead in the layer")
    body = (f"<nav>{' '.join(links)}</nav><h1>{_e(site['model'])} · {_e(layer['layer'])}</h1>"
            f"<p class=\"sub\">{info}</p><div class=\"cards\">{''.join(cards)}</div>")
    return _page(f"{site['model']} {layer['layer']}", body, "../")


def _winner(w: dict, size: tuple[int, int]) -> str:
    h, width = size
    b = w["box"]
    style = (f"top:{100 * b['top'] / h:.2f}%;left:{100 * b['left'] / width:.2f}%;"
             f"height:{100 * (b['bottom'] - b['top']) / h:.2f}%;width:{100 * (b['right'] - b['left']) / width:.2f}%")
    proj = (f'<a class="proj" href="../{_e(w["projection"])}"><img src="../{_e(w["projection"])}" '
            f'alt="projection of rank {w["rank"] + 1}" loading="lazy"></a>' if w.get("projection") else "")
    cls = f" · {_e(w['class'])}" if w.get("class") else ""
    return (f'<div class="win"><div class="pair"><div class="frame"><img src="../{_e(w["image_file"])}" '
            f'alt="image {w["image"]}" loading="lazy" width="96" height="96"><span class="rf" style="{style}">'
            f'</span></div>{proj}</div>#{w["rank"] + 1} · {_n(w["value"])}{cls}<br>'
            f'<small>{_e(w["path"])} ({w["y"]}, {w["x"]})</small></div>')


def unit_page(site: dict, layer: dict, u: dict, prev: dict | None, nxt: dict | None) -> str:
    """units/LAYER-U.html: one unit's top-k images with their receptive-field boxes and
    projections, its optimised stimulus, statistics, top classes and most similar units,
    and links to the previous and next unit and to its layer."""
    name = layer["layer"]
    links = ['<a href="../index.html">index</a>', f'<a href="../{_e(layer["page"])}">layer {_e(name)}</a>']
    if prev is not None:
        links.append(f'<a href="../{_e(prev["page"])}" rel="prev">← unit {prev["unit"]}</a>')
    if nxt is not None:
        links.append(f'<a href="../{_e(nxt["page"])}" rel="next">unit {nxt["unit"]} →</a>')
    size = tuple(site["input_size"][1:])
    wins = "".join(_winner(w, size) for w in u["winners"]) or "<p>No image drives this unit above 0.</p>"
    stats = _table(["", ""], [["dead", _n(u["dead"])], ["fires on", f"{_n(100 * u['firing'], 4)}% of positions"],
                              ["mean", _n(u["mean"])], ["max", _n(u["max"])],
                              ["weight norm", _n(u.get("weight_norm"))]])
    stim = ""
    if u.get("stimulus"):
        s = u["stimulus"]
        stim = (f'<div class="stim"><h2>Optimised stimulus</h2><img src="../{_e(s["file"])}" alt="optimised stimulus" '
                f'width="192" height="192"><br>activation {_n(s["value"])} '
                f'({_n(s["vs_median_topk"])}× the median of its top-{site["top"]}); {_n(s["rank"])} of the layer\'s '
                f'{s["live_units"] - 1} other units that fire on the data respond more strongly to it, each relative '
                f'to its own dataset maximum</div>')
    classes = _table(["class", "mean per-image max"], [[_e(c["class"]), _n(c["mean"])] for c in u.get("classes", [])],
                     [False, True]) if u.get("classes") else "<p>The data has no labels.</p>"
    similar = _table(["unit", "correlation"], [[f'<a href="../{_e(s["page"])}">{_e(name)} unit {s["unit"]}</a>'
                                                if s.get("page") else f'{_e(name)} unit {s["unit"]}',
                                                _n(s["correlation"])] for s in u.get("similar", [])],
                     [False, True]) if u.get("similar") else "<p>None (its per-image maxima do not vary).</p>"
    dead = ' <span class="dead-badge">dead</span>' if u["dead"] else ""
    body = (f"<nav>{' '.join(links)}</nav><h1>{_e(site['model'])} · {_e(name)} · unit {u['unit']}{dead}</h1>"
            f"<p class=\"sub\">Top {site['top']} activations over {_n(site['images'])} images of {_e(site['data'])}: "
            f"each image with the unit's receptive field (red box) and the {_e(site['method'])} projection of "
            f"that activation (grey = 0, contrast-normalised).</p><div class=\"wins\">{wins}</div>"
            f"<div class=\"top\">{stim}<div><h2>Statistics</h2>{stats}</div><div><h2>Top classes</h2>{classes}</div>"
            f"<div><h2>Most similar units</h2>{similar}</div></div>")
    return _page(f"{site['model']} {name} unit {u['unit']}", body, "../")


__all__ = ["CSS", "JS", "index_page", "layer_page", "unit_page"]
