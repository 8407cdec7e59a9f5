"""What a stream's owner can change while it runs (the served session's data channel, the CLI's flags)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Literal

from mirage.types import Identity, SwapOptions, SwapperName

FallbackPolicy = Literal["blur", "hold", "passthrough"]
#: ``enhancer`` when no enhancement runs.
NO_ENHANCER = "none"
#: CodeFormer's fidelity weight ``w`` when nobody chose one (the original product's default).
DEFAULT_FIDELITY = 0.75


@dataclass
class FrameControls:
    """Per-stream choices (one session, or one CLI run).

    ``identity_key`` names the current identity towards the swapper replicas
    (a fresh random key for every new identity, never derived from its data).
    ``enhancer``: ``none`` or an enhancer's name; ``fidelity``: CodeFormer's
    ``w`` (others ignore it); ``blend``: how much of the enhanced face shows
    (0: the swapped face, 1: the enhanced one, through the swap's mask).
    """

    identity: Identity | None = field(default=None, repr=False)
    identity_key: str = ""
    swapper: SwapperName = "mesh"
    max_faces: int = 1
    options: SwapOptions = field(default_factory=SwapOptions)
    fallback: FallbackPolicy = "blur"
    enhancer: str = NO_ENHANCER
    fidelity: float = DEFAULT_FIDELITY
    blend: float = 1.0

    def __post_init__(self) -> None:
        if self.identity is not None and not self.identity_key:
            self.identity_key = secrets.token_hex(8)

    def set_identity(self, identity: Identity | None) -> str:
        """Install a new identity (or none); returns the previous key so it can be forgotten."""
        previous = self.identity_key
        self.identity = identity
        self.identity_key = secrets.token_hex(8) if identity is not None else ""
        return previous
