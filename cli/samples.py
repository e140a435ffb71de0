"""``vizcnn samples``: the sample images shipped with vizcnn, and where they are."""
from __future__ import annotations

import click

from .main import cli
from .options import echo_summary, json_option


@cli.command()
@json_option
def samples(as_json):
    """List the sample images shipped with vizcnn and the folder they are in.

    An IMAGE given as samples/NAME that is not in the current folder reads the shipped
    NAME (a note on stderr says so); DATA=samples is all of them.
    """
    from vizcnn.io.samples import SAMPLES_DIR, sample_names

    names = sample_names()
    lines = [f"{len(names)} sample images in {SAMPLES_DIR}", *(f"  samples/{n}" for n in names),
             "samples/NAME reads one of them from any folder (the shipped copy when there is no samples/ here); "
             "DATA=samples is all of them."]
    echo_summary({"folder": str(SAMPLES_DIR), "samples": names}, as_json, "\n".join(lines))
