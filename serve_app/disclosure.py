"""What the page and the client are told about the models in use: licences, and that the media is synthetic.

The licences come from the model manifest (``configs/models.yaml``); a swapper is
non-commercial when any model it needs is (``MIRAGE_ALLOW_NONCOMMERCIAL=0`` then
refuses it). Consent to use a face is asked and remembered by the client only:
nothing here stores it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from mirage.disclosure import SYNTHETIC_NOTICE

__all__ = ["SYNTHETIC_NOTICE", "SWAPPER_MODELS", "allowed_swappers", "is_commercial", "noncommercial_message",
           "swapper_licences"]

#: The manifest models each swapper runs on (detector, landmarks/identity, swap).
SWAPPER_MODELS: dict[str, tuple[str, ...]] = {
    "mesh": ("blazeface_short", "facemesh"),
    "inswapper": ("inswapper_128_fp16", "scrfd_10g", "arcface_w600k_r50"),
}



def noncommercial_message(swapper: str) -> str:
    return (
        f"The {swapper} swapper uses models licensed for non-commercial use only, "
        "and this server does not allow them (MIRAGE_ALLOW_NONCOMMERCIAL=0)."
    )


@lru_cache(maxsize=1)
def _licences() -> dict[str, list[dict[str, Any]]]:
    from mirage.weights.manifest import load_manifest

    manifest = load_manifest()
    out: dict[str, list[dict[str, Any]]] = {}
    for swapper, names in SWAPPER_MODELS.items():
        rows = []
        for name in names:
            entry = manifest.get(name)
            rows.append({"model": entry.name, "title": entry.title, "licence": entry.licence,
                         "commercial_use": entry.commercial_use})
        out[swapper] = rows
    return out


def swapper_licences(swapper: str) -> list[dict[str, Any]]:
    """The models ``swapper`` runs on, each with its licence (empty for an unknown swapper)."""
    return [dict(row) for row in _licences().get(swapper, [])]


def is_commercial(swapper: str) -> bool:
    """True when every model the swapper needs may be used commercially (an unknown one: False)."""
    rows = _licences().get(swapper) or []
    return bool(rows) and all(row["commercial_use"] for row in rows)


def allowed_swappers(swappers: list[str], allow_noncommercial: bool) -> list[str]:
    return [s for s in swappers if allow_noncommercial or is_commercial(s)]
