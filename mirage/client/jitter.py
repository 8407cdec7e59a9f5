"""The marker-bit jitter buffer, shared by the client and the server: it lives in :mod:`mirage.webrtc.jitter`."""

from __future__ import annotations

from mirage.webrtc.jitter import MarkerJitterBuffer, use_marker_frames

__all__ = ["MarkerJitterBuffer", "use_marker_frames"]
