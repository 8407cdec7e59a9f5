"""What crosses the boundary into the model deployments (defined in ``mirage.pipeline.messages``)."""

from __future__ import annotations

from mirage.pipeline.messages import SWAPPER_UNAVAILABLE, UNKNOWN_IDENTITY, IdentityReply, SwapItem, SwapResult

__all__ = ["SWAPPER_UNAVAILABLE", "UNKNOWN_IDENTITY", "IdentityReply", "SwapItem", "SwapResult"]
