"""``vizcnn models`` and ``vizcnn layers``: the zoo and its layers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .main import cli
from .options import echo_summary, json_option

#: The model table is computed from the architectures (every model built on the meta
#: device, traced for geometry and FLOPs: seconds) and cached per version of the code that
#: computes it, so `vizcnn models` after the first run needs neither torch nor the models.
CACHE_ENV = "VIZCNN_CACHE"


def _cache_file() -> Path:
    """$VIZCNN_CACHE, else $XDG_CACHE_HOME/vizcnn, else ~/.cache/vizcnn; the file name is a
    hash of the code and library versions the table depends on, so a change recomputes it."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    import vizcnn

    root = Path(os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "vizcnn")
    package = Path(vizcnn.__file__).parent
    digest = hashlib.sha256()
    for lib in ("torch", "torchvision"):
        try:
            digest.update(f"{lib} {version(lib)}\n".encode())
        except PackageNotFoundError:
            pass
    for source in sorted([*package.glob("models/*.py"), package / "core" / "layers.py", package / "core" / "geometry.py",
                          Path(__file__)]):
        digest.update(source.name.encode() + source.read_bytes())
    return root / f"models-{digest.hexdigest()[:16]}.json"


def _model_rows(cards=None) -> list[dict]:
    from vizcnn.models.cards import model_cards

    return [{
        "name": c.spec.name, "params": c.params, "published_params": c.spec.published_params,
        "input_size": list(c.spec.input_size), "gflops": round(c.flops / 1e9, 3),
        "top1": c.spec.top1, "top5": c.spec.top5, "source": c.spec.source,
        "convs": [{"layer": i.path, "kernel": list(i.kernel), "stride": list(i.stride), "receptive_field": list(i.rf)}
                  for i in c.convs],
    } for c in (cards if cards is not None else model_cards())]


def cached_model_rows() -> list[dict]:
    """The rows of `vizcnn models`, from the cache when it is current; an unreadable or
    unwritable cache only costs the computation."""
    try:
        file = _cache_file()
        return json.loads(file.read_text())["models"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    rows = _model_rows()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        temp = file.with_name(f".{file.name}.{os.getpid()}")
        temp.write_text(json.dumps({"models": rows}))
        os.replace(temp, file)
    except OSError:
        pass
    return rows


@cli.command()
@click.option("--plot", metavar="FILE", default=None,
              help="Also draw published ImageNet accuracy against parameter count to FILE (.png/.pdf/.svg).")
@json_option
def models(plot, as_json):
    """List every architecture: computed and published parameter counts, input size,
    FLOPs for one image, and each conv layer's kernel/stride/receptive field."""
    if plot:  # the figure needs the models anyway
        from vizcnn.io.imageio import save_figure
        from vizcnn.models.cards import model_cards
        from vizcnn.render.zoo import lineage_figure

        cards = model_cards()
        save_figure(lineage_figure(cards), plot)
        rows = _model_rows(cards)
    else:
        rows = cached_model_rows()
    lines = [f"{'model':<18} {'params':>13} {'published':>13}  {'input':<10} {'GFLOPs':>7}  {'top-1':>6}  source"]
    for r in rows:
        top1 = f"{r['top1']:.1f}" if r["top1"] is not None else "-"
        lines.append(f"{r['name']:<18} {r['params']:>13,} {r['published_params']:>13,}  "
                     f"{'×'.join(map(str, r['input_size'])):<10} {r['gflops']:>7.2f}  {top1:>6}  {r['source']}")
    from vizcnn.models.shipped import shipped_weights

    shipped = [{"model": m, **{k: card[k] for k in ("weights", "input_size", "data", "accuracy")}}
               for m, named in shipped_weights().items() for card in named.values()]
    lines.append("")
    lines.append("learned weights shipped with vizcnn (--weights NAME; works offline):")
    for w in shipped:
        lines.append(f"  {w['model']} --weights {w['weights']}: {'×'.join(map(str, w['input_size']))} input, "
                     f"{w['data']}; top-1 {w['accuracy']['top1']:.3f} on {w['accuracy']['split']}")
    lines.append("")
    lines.append("conv layers (kernel/stride, receptive field in input pixels):")
    for r in rows:
        convs = [f"{c['layer']} {c['kernel'][0]}/{c['stride'][0]} rf{c['receptive_field'][0]}" for c in r["convs"]]
        shown = convs if len(convs) <= 16 else convs[:12] + [f"... {len(convs) - 12} more (vizcnn layers {r['name']})"]
        lines.append(f"  {r['name']}: " + ", ".join(shown))
    if plot:
        lines.append(f"\nwrote the plot to {plot}")
    echo_summary({"models": rows, "shipped_weights": shipped, **({"plot": str(plot)} if plot else {})}, as_json,
                 "\n".join(lines))


@cli.command()
@click.argument("model", metavar="MODEL")
@click.option("--all", "show_all", is_flag=True, help="List every module, not only the named feature layers.")
@json_option
def layers(model, show_all, as_json):
    """List MODEL's layers: friendly name, module path, output shape, kernel/stride and
    receptive field. Any name listed here works with --layer."""
    from vizcnn.core.layers import friendly_names, layer_geometry
    from vizcnn.core.state import model_device
    from vizcnn.models import get_spec
    from vizcnn.models.cards import skeleton

    spec = get_spec(model)
    net = skeleton(model).eval()
    geometry = layer_geometry(net, spec.input_size, device=model_device(net))
    friendly = friendly_names(net)
    infos = [i for k, i in geometry.items() if k in friendly] if friendly and not show_all else \
        [i for k, i in geometry.items() if k not in friendly]
    rows = [{"name": i.name, "module": i.path, "kind": i.kind, "shape": list(i.shape),
             "kernel": list(i.kernel) if i.kernel else None, "stride": list(i.stride) if i.stride else None,
             "receptive_field": list(i.rf), "jump": list(i.jump)} for i in infos]
    lines = [f"{'name':<24} {'module':<26} {'kind':<18} {'output':<16} {'k/s':<7} {'rf':>5} {'jump':>5}"]
    for r in rows:
        ks = f"{r['kernel'][0]}/{r['stride'][0]}" if r["kernel"] else ""
        lines.append(f"{r['name']:<24} {r['module']:<26} {r['kind']:<18} {'×'.join(map(str, r['shape'])):<16} "
                     f"{ks:<7} {r['receptive_field'][0]:>5} {r['jump'][0]:>5}")
    echo_summary({"model": model, "layers": rows}, as_json, "\n".join(lines))
