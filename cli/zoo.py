"""``vizcnn models`` and ``vizcnn layers``: the zoo and its layers."""
from __future__ import annotations

import click

from .main import cli
from .options import echo_summary, json_option


@cli.command()
@click.option("--plot", metavar="FILE", default=None,
              help="Also draw published ImageNet accuracy against parameter count to FILE (.png/.pdf/.svg).")
@json_option
def models(plot, as_json):
    """List every architecture: computed and published parameter counts, input size,
    FLOPs for one image, and each conv layer's kernel/stride/receptive field."""
    from vizcnn.imageio import save_figure
    from vizcnn.zoo import lineage_figure, model_cards

    cards = model_cards()
    if plot:
        save_figure(lineage_figure(cards), plot)
    rows = [{
        "name": c.spec.name, "params": c.params, "published_params": c.spec.published_params,
        "input_size": list(c.spec.input_size), "gflops": round(c.flops / 1e9, 3),
        "top1": c.spec.top1, "top5": c.spec.top5, "source": c.spec.source,
        "convs": [{"layer": i.path, "kernel": list(i.kernel), "stride": list(i.stride), "receptive_field": list(i.rf)}
                  for i in c.convs],
    } for c in cards]
    lines = [f"{'model':<18} {'params':>13} {'published':>13}  {'input':<10} {'GFLOPs':>7}  {'top-1':>6}  source"]
    for r in rows:
        top1 = f"{r['top1']:.1f}" if r["top1"] is not None else "-"
        lines.append(f"{r['name']:<18} {r['params']:>13,} {r['published_params']:>13,}  "
                     f"{'×'.join(map(str, r['input_size'])):<10} {r['gflops']:>7.2f}  {top1:>6}  {r['source']}")
    lines.append("")
    lines.append("conv layers (kernel/stride, receptive field in input pixels):")
    for r in rows:
        convs = [f"{c['layer']} {c['kernel'][0]}/{c['stride'][0]} rf{c['receptive_field'][0]}" for c in r["convs"]]
        shown = convs if len(convs) <= 16 else convs[:12] + [f"... {len(convs) - 12} more (vizcnn layers {r['name']})"]
        lines.append(f"  {r['name']}: " + ", ".join(shown))
    echo_summary({"models": rows}, as_json, "\n".join(lines))


@cli.command()
@click.argument("model", metavar="MODEL")
@click.option("--all", "show_all", is_flag=True, help="List every module, not only the named feature layers.")
@json_option
def layers(model, show_all, as_json):
    """List MODEL's layers: friendly name, module path, output shape, kernel/stride and
    receptive field. Any name listed here works with --layer."""
    from vizcnn.layers import friendly_names, layer_geometry
    from vizcnn.models import get_spec
    from vizcnn.zoo import _skeleton

    spec = get_spec(model)
    net = _skeleton(model).eval()
    geometry = layer_geometry(net, spec.input_size, device=next(net.parameters()).device)
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
