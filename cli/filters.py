"""``vizcnn filters MODEL``: a convolution's filters, their spectra and aliasing, from the weights alone."""
from __future__ import annotations

from pathlib import Path

import click

from .main import cli
from .options import (default_weights, echo_summary, force_option, json_option, model_argument, out_option,
                      output_folder, seed_option, weights_option, wrote)


def dead_line(dead: dict) -> str:
    """The one-line count of dead filters (near-zero or structureless weights) with their
    indices and the white-noise base rate."""
    shown = ", ".join(map(str, dead["dead_filters"][:12])) + (", ..." if dead["dead"] > 12 else "")
    return (f"{dead['dead']} dead filters (near-zero or structureless weights{': ' + shown if shown else ''}; "
            f"a white-noise layer: {dead['noise_rate']:.0%})")


@cli.command()
@model_argument
@click.option("--layer", default=None, metavar="NAME",
              help="Convolution to analyse (friendly name, module path, or a block holding one convolution); "
                   "default: the model's first convolution. See `vizcnn layers MODEL`.")
@click.option("--fft-size", "size", default=None, type=click.IntRange(1, 4096), metavar="N",
              help="FFT size of each spectrum, up to 4096 (default 64, or more for kernels over 32 px).")
@weights_option
@seed_option
@out_option
@force_option
@json_option
def filters(model, layer, size, weights, seed, out, force, as_json):
    """Analyse the filters of one convolution (default: the first) from the weights alone.

    Writes filters.png (each filter scaled to its own range, RGB for 3 input channels),
    spectra.png (each filter's power spectrum with the stride's Nyquist square),
    spectra_summary.png (dominant frequencies by band, aliasing fraction and structure
    per filter) and summary.json (the layer's numbers and one entry per filter).
    Frequencies are in cycles/pixel; the aliasing fraction is the share of a filter's
    energy outside |fx|, |fy| <= 1/(2 stride), which the strided convolution folds back.
    Bands: low < 1/6, mid 1/6 to 1/3, extreme-high >= 1/3 cycle/px. Dead filters
    (framed in red): near-zero (norm under 0.1 x the layer's median) or without spatial
    structure. Weights trained on grey images are measured as each filter's channel sum,
    the part the data trains.
    """
    from vizcnn.io.imageio import safe_filename
    from vizcnn.methods.spectra import conv_filters, fft_size, grey_weights
    from vizcnn.models import load_model
    from vizcnn.writers.filters import write_filters

    weights = default_weights(model, weights)
    net = load_model(model, weights, seed=seed, device="cpu")
    conv = conv_filters(net, layer)  # a bad layer or FFT size fails here, before the folder is made
    fft_size(tuple(conv.weight.shape[-2:]), size)
    default_out = Path("vizcnn-out") / f"filters-{model}-{safe_filename(conv.name)}"
    folder = output_folder(out or default_out, "filters", force=force)
    summary = write_filters(folder, net, model, layer, size=size, grey=grey_weights(model, weights),
                            extra={"weights": str(weights), "seed": seed if weights == "random" else None,
                                   "out": str(folder.final)})
    af, bands = summary["alias_fraction"], summary["bands"]["fractions"]
    if summary["effective"] != "the weights":
        click.echo(f"{model} --weights {weights} was trained on grey images: measuring each filter's channel sum, "
                   f"the part the data trains", err=True)
    echo_summary(summary, as_json,
                 f"{model} {summary['layer']} ({summary['module']}"
                 f"{'' if summary['conv'] == summary['module'] else '; filters of ' + summary['conv']}): "
                 f"{summary['filters']} filters, "
                 f"stride {summary['stride'][0]}; "
                 f"aliasing fraction median {af['median']:.2f} (white noise {af['noise_expected']:.2f}); "
                 f"peaks low/mid/high {bands['low']:.0%}/{bands['mid']:.0%}/{bands['high']:.0%}; "
                 f"{dead_line(summary['dead_filters'])}\n"
                 + wrote(summary, folder), folder)
