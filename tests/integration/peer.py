"""Test-side helpers for the session protocol: full sessions through ``mirage.client`` and raw exchanges.

Full sessions use the real Python client (:class:`mirage.client.session.MirageSession`)
sending the astronaut moving clip with stamped frame numbers. Raw helpers speak
the WebSocket protocol directly, for inputs the client would never send.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection

from mirage.client.session import ClientConfig, MirageSession, SessionOptions
from mirage.client.sources import astronaut_source
from mirage.client.stamp import stamp
from mirage.detect.blazeface import BlazeFaceDetector
from standins.faces import tom_hanks_path

WIDTH, HEIGHT = 640, 480
#: The server analyses a copy at most 512 px long but sends frames back at the camera's resolution.
OUT_WIDTH, OUT_HEIGHT = WIDTH, HEIGHT


def reference_bytes() -> bytes:
    """The reference photo: Tom Hanks from the insightface wheel (PNG bytes, as a browser would upload)."""
    return tom_hanks_path().read_bytes()


def clip(fps: float = 15.0):  # type: ignore[no-untyped-def]
    return astronaut_source(WIDTH, HEIGHT, fps)


def client_config(url: str, api_key: str | None, *, fps: float = 15.0, audio: bool = False, keep_frames: int = 8,
                  options: SessionOptions | None = None, reference: bytes | None = None) -> ClientConfig:
    return ClientConfig(
        url=url,
        reference=reference if reference is not None else reference_bytes(),
        source=clip(fps),
        api_key=api_key,
        options=options or SessionOptions(),
        audio=audio,
        tone_hz=440.0 if audio else None,
        fps=fps,
        keep_frames=keep_frames,
    )


def sent_frame(number: int, fps: float = 15.0) -> np.ndarray:
    """The exact frame the client sent with stamp ``number``, at the size the server sends frames back."""
    source = clip(fps)
    image = stamp(source.frame(number % len(source)), number)
    if image.shape[:2] == (OUT_HEIGHT, OUT_WIDTH):
        return image
    return cv2.resize(image, (OUT_WIDTH, OUT_HEIGHT), interpolation=cv2.INTER_AREA)


_DETECTOR: BlazeFaceDetector | None = None


def face_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """The largest face's box in a (sent) frame, by the real detector."""
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = BlazeFaceDetector()
    dets = _DETECTOR.detect([image])[0]
    assert dets, "the test clip must show a face"
    x1, y1, x2, y2 = max(dets, key=lambda d: d.area).box
    h, w = image.shape[:2]
    return max(0, int(x1)), max(0, int(y1)), min(w, int(x2)), min(h, int(y2))


@dataclass
class SwapCheck:
    face_diff: float
    background_diff: float
    badge_diff: float
    number: int

    @property
    def swapped(self) -> bool:
        """The face changed strongly, the background did not, and the "AI-modified" badge is there
        (the badge tells a swapped frame from a fallback-blurred one)."""
        # (The swapped face keeps the live shading and tone, so its mean difference is in the detail.)
        return self.face_diff > 12.0 and self.background_diff < 8.0 and self.badge_diff > 20.0


def compare_to_sent(received: np.ndarray, number: int, fps: float = 15.0) -> SwapCheck:
    """Mean absolute difference in the face box and in the background (away from face and badge)."""
    sent = sent_frame(number, fps)
    assert received.shape == sent.shape, (received.shape, sent.shape)
    x1, y1, x2, y2 = face_box(sent)
    diff = np.abs(received.astype(np.int16) - sent.astype(np.int16)).mean(axis=2)
    face = float(diff[y1:y2, x1:x2].mean())
    keep = np.ones(diff.shape, bool)
    pad = int(0.35 * max(x2 - x1, y2 - y1))
    keep[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad] = False
    keep[int(OUT_HEIGHT * 0.85) :, int(OUT_WIDTH * 0.6) :] = False  # the badge corner
    badge = float(diff[int(OUT_HEIGHT * 0.92) :, int(OUT_WIDTH * 0.8) :].mean())
    return SwapCheck(face_diff=face, background_diff=float(diff[keep].mean()), badge_diff=badge, number=number)


async def open_session(config: ClientConfig) -> MirageSession:
    session = MirageSession(config)
    await session.connect()
    return session


# --- raw protocol ------------------------------------------------------------------------


async def make_offer(video: str | None = "sendrecv", audio: bool = True) -> str:
    """A real aiortc offer (non-trickle) with the given video direction (None: no video at all)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if video:
            pc.addTransceiver("video", direction=video)
        if audio:
            pc.addTransceiver("audio", direction="sendrecv")
        pc.createDataChannel("control")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def offer_message(sdp: str, reference: bytes | str | None = None, api_key: str | None = None,
                  **options: Any) -> dict[str, Any]:
    ref = reference if reference is not None else reference_bytes()
    return {
        "type": "offer",
        "sdp": sdp,
        "sdp_type": "offer",
        "reference_b64": ref if isinstance(ref, str) else base64.b64encode(ref).decode("ascii"),
        "api_key": api_key,
        "options": options or {"swapper": "mesh", "max_faces": 1, "mouth_mask": False, "fallback": "blur"},
    }


@dataclass
class RawExchange:
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    seconds: float = 0.0

    @property
    def error(self) -> dict[str, Any] | None:
        return next((m for m in self.messages if m.get("type") == "error"), None)


async def raw_exchange(ws_url: str, first: dict[str, Any] | str | bytes | None, *,
                       headers: dict[str, str] | None = None, timeout: float = 30.0) -> RawExchange:
    """Open ``/ws/session``, send one message (or nothing), collect replies until the server closes."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    start = loop.time()
    out = RawExchange()
    async with connect(ws_url, additional_headers=headers, max_size=2**23, open_timeout=20) as ws:
        if first is not None:
            try:
                await ws.send(json.dumps(first) if isinstance(first, dict) else first)
            except ConnectionClosed:
                pass  # refused at once (e.g. a wrong key in the headers): the reply is already buffered
        try:
            while True:
                raw = await asyncio.wait_for(ws.recv(), timeout)
                out.messages.append(json.loads(raw))
        except ConnectionClosed:
            pass
        out.close_code = ws.close_code
        out.close_reason = ws.close_reason or ""
    out.seconds = loop.time() - start
    return out
