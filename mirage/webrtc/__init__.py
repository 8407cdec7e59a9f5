"""Mirage's narrow adapters over aiortc / aioice (see :mod:`mirage.webrtc.guard`)."""
