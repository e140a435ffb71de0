"""Learned weights shipped inside the package, and their cards (no torch needed, so
``vizcnn models`` can list them instantly).

Each is ``models/weights/MODEL-NAME.pt`` with a card ``MODEL-NAME.json``: what the
weights need (input size, normalisation, classes, widths that differ from the zoo's
definition) and what they were trained on and reached. ``--weights NAME`` picks one.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@lru_cache(maxsize=None)
def _cards() -> dict[str, dict[str, dict]]:
    cards: dict[str, dict[str, dict]] = {}
    for path in sorted(WEIGHTS_DIR.glob("*.json")):
        card = json.loads(path.read_text())
        cards.setdefault(card["model"], {})[card["weights"]] = {**card, "file": path.with_suffix(".pt").name}
    return cards


def shipped_weights(name: str | None = None) -> dict:
    """{weights name: card} of the learned weights shipped for model ``name``; with no
    name, {model: {weights name: card}} for every model."""
    return _cards() if name is None else _cards().get(name, {})


__all__ = ["WEIGHTS_DIR", "shipped_weights"]
