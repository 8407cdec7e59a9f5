"""Session and control messages (JSON text), validated with pydantic.

The same control schema travels over the WebRTC data channel ``control`` and
over the session WebSocket. Anything malformed becomes a :class:`ControlError`
carrying a code and one sentence for the client; the session lives on.

A data channel message is limited by SCTP's advertised maximum (64 KiB with
aiortc), so clients send a large new reference photo over the WebSocket.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from serve_app.settings import FallbackPolicy

SwapperChoice = Literal["mesh", "inswapper"]
#: ``none`` or an enhancer's manifest name (``gfpgan_1.4``, ``codeformer``, ...); availability is checked by the session.
EnhancerChoice = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
#: A weight in [0, 1] (CodeFormer's fidelity, the enhancer's blend).
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]

#: Longest SDP we accept (a full offer with audio, video and data is ~5 kB).
MAX_SDP_CHARS = 200_000
#: Longest text message parsed at all (the server's WebSocket frame limit is 16 MiB); the
#: reference photo's own limit (10 MB) is checked afterwards, with its own message.
MAX_MESSAGE_CHARS = 16 * 1024 * 1024

_DATA_URL_RE = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


class ControlError(Exception):
    """A message the server cannot act on; ``code`` and ``message`` go back to the client."""

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class _Strict(BaseModel):
    # strict: JSON types as sent, no coercion ("2", true or "yes" is not a number or a boolean).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SessionOptions(_Strict):
    """Per-session options; ``None`` means the server's default (``MIRAGE_MAX_FACES``, ``MIRAGE_FALLBACK``)."""

    swapper: SwapperChoice = "mesh"
    max_faces: Annotated[int, Field(ge=1, le=8)] | None = None
    mouth_mask: bool = False
    fallback: FallbackPolicy | None = None
    #: Face enhancement after the swap: ``none`` or an available enhancer; ``fidelity``: CodeFormer's
    #: ``w`` (None: MIRAGE_CODEFORMER_FIDELITY); ``blend``: how much of the enhanced face shows.
    enhancer: EnhancerChoice = "none"
    fidelity: UnitFloat | None = None
    blend: UnitFloat = 1.0


class OfferMessage(_Strict):
    type: Literal["offer"]
    sdp: Annotated[str, Field(min_length=1, max_length=MAX_SDP_CHARS)]
    sdp_type: Literal["offer"] = "offer"
    #: Base64 photo; absent when the message is binary (``MRG1`` framing, the photo as raw bytes).
    reference_b64: Annotated[str, Field(min_length=1)] | None = None
    api_key: str | None = Field(default=None, repr=False)
    options: SessionOptions = SessionOptions()


class SetReference(_Strict):
    type: Literal["set_reference"]
    id: int | None = None
    reference_b64: Annotated[str, Field(min_length=1)] | None = None


class SetOptions(_Strict):
    type: Literal["set_options"]
    id: int | None = None
    swapper: SwapperChoice | None = None
    max_faces: Annotated[int, Field(ge=1, le=8)] | None = None
    mouth_mask: bool | None = None
    fallback: FallbackPolicy | None = None
    #: The voice: ``off``, a preset, ``custom`` or ``rvc:NAME`` (mirage.voice.config); the numbers
    #: override the preset's (ranges checked there, with their own sentence).
    voice: Annotated[str, Field(min_length=1, max_length=80)] | None = None
    pitch_semitones: Annotated[float, Field(allow_inf_nan=False)] | None = None
    formant: Annotated[float, Field(allow_inf_nan=False)] | None = None
    #: Face enhancement (``none`` or an available enhancer), CodeFormer's fidelity, the enhanced face's blend.
    enhancer: EnhancerChoice | None = None
    fidelity: UnitFloat | None = None
    blend: UnitFloat | None = None

    def voice_options(self) -> dict[str, Any]:
        """The voice fields this message sets (empty: it does not touch the voice)."""
        fields = {"voice": self.voice, "pitch_semitones": self.pitch_semitones, "formant": self.formant}
        return {k: v for k, v in fields.items() if v is not None}


class Ping(_Strict):
    type: Literal["ping"]
    id: int | None = None


ControlMessage = Annotated[SetReference | SetOptions | Ping, Field(discriminator="type")]
_CONTROL = TypeAdapter(ControlMessage)
CONTROL_TYPES = ("set_reference", "set_options", "ping")


#: Longest integer literal accepted in a message (ids and counts are small).
MAX_INT_DIGITS = 18


class _NumberError(ValueError):
    pass


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _NumberError(f"Numbers in messages are limited to {MAX_INT_DIGITS} digits.")
    return int(text)


def _no_constant(text: str) -> float:
    raise _NumberError(f"{text} is not valid JSON.")


def _load_json(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ControlError("bad_request", "Messages must be UTF-8 JSON text.") from None
    if len(text) > MAX_MESSAGE_CHARS:
        raise ControlError("bad_request", "The message is too large.")
    try:
        data = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except _NumberError as exc:
        raise ControlError("bad_request", str(exc)) from None
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; so is a too-long integer
        raise ControlError("bad_request", "The message is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ControlError("bad_request", "The message must be a JSON object with a \"type\".")
    return data


def _request_id(data: dict[str, Any]) -> int | None:
    value = data.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _explain(exc: ValidationError) -> str:
    """One sentence naming the first bad field, without echoing the (possibly huge) input."""
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int)) or "message"
    return f"Invalid {where}: {first.get('msg', 'bad value')}."


def parse_control(text: str | bytes) -> SetReference | SetOptions | Ping:
    """A control message from the data channel or the WebSocket."""
    data = _load_json(text)
    rid = _request_id(data)
    kind = data.get("type")
    if kind not in CONTROL_TYPES:
        raise ControlError(
            "bad_request", f"Unknown message type {str(kind)[:40]!r}; expected one of {', '.join(CONTROL_TYPES)}.", rid
        )
    try:
        return _CONTROL.validate_python(data)
    except ValidationError as exc:
        raise ControlError("bad_request", _explain(exc), rid) from None


def parse_offer(text: str | bytes) -> OfferMessage:
    """The first message of a session."""
    data = _load_json(text)
    if data.get("type") != "offer":
        raise ControlError("bad_request", "The first message of a session must be {\"type\": \"offer\", ...}.")
    try:
        return OfferMessage.model_validate(data)
    except ValidationError as exc:
        code = "bad_offer" if any(e.get("loc", ("",))[0] in ("sdp", "sdp_type") for e in exc.errors()) else "bad_request"
        raise ControlError(code, _explain(exc)) from None


#: A binary WebSocket message: this magic, a 4-byte big-endian length, that many bytes of JSON
#: (the offer or a ``set_reference`` without ``reference_b64``), then the photo's raw bytes. No
#: base64 overhead, so any photo up to the limit (and a little over it, to be refused with a
#: message) fits in the server's 16 MiB WebSocket frame.
BINARY_MAGIC = b"MRG1"
MAX_BINARY_HEADER = 256 * 1024


def split_binary(message: str | bytes) -> tuple[str | bytes, bytes | None]:
    """(JSON part, photo bytes) of a session message; the photo is None for a plain JSON message."""
    if not isinstance(message, bytes) or message[:4] != BINARY_MAGIC:
        return message, None
    if len(message) < 8:
        raise ControlError("bad_request", "The binary message is truncated.")
    size = int.from_bytes(message[4:8], "big")
    if size > MAX_BINARY_HEADER or 8 + size > len(message):
        raise ControlError("bad_request", "The binary message's JSON header length is not valid.")
    return message[8 : 8 + size], message[8 + size :]


def pack_binary(header: dict[str, Any], photo: bytes) -> bytes:
    """The binary form of an offer or ``set_reference`` (for clients)."""
    head = json.dumps(header).encode("utf-8")
    return BINARY_MAGIC + len(head).to_bytes(4, "big") + head + photo


def reference_photo(reference_b64: str | None, photo: bytes | None, max_bytes: int, request_id: int | None = None) -> bytes:
    """The photo of an offer or ``set_reference``, from its base64 field or the binary message."""
    try:
        if photo is not None:
            if reference_b64 is not None:
                raise ControlError("bad_request", "Send the reference photo either as reference_b64 or as binary data, not both.")
            return check_reference_size(photo, max_bytes)
        if reference_b64 is None:
            raise ControlError("bad_request", "A reference photo is needed (reference_b64, or a binary message).")
        return decode_reference(reference_b64, max_bytes)
    except ControlError as exc:
        raise ControlError(exc.code, exc.message, request_id) from None


def check_reference_size(data: bytes, max_bytes: int) -> bytes:
    if not data:
        raise ControlError("bad_reference", "The reference photo is empty.")
    if len(data) > max_bytes:
        raise ControlError(
            "bad_reference", f"The reference photo is larger than {max_bytes // (1024 * 1024)} MB; choose a smaller photo."
        )
    return data


def decode_reference(reference_b64: str, max_bytes: int) -> bytes:
    """Base64 (optionally a ``data:`` URL) to bytes, refusing oversize input before decoding it."""
    payload = _DATA_URL_RE.sub("", reference_b64.strip(), count=1)
    # MIME base64 (RFC 2045) breaks lines every 76 characters: line breaks are not data.
    if "\n" in payload or "\r" in payload:
        payload = payload.replace("\r", "").replace("\n", "")
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise ControlError(
            "bad_reference", f"The reference photo is larger than {max_bytes // (1024 * 1024)} MB; choose a smaller photo."
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ControlError("bad_reference", "The reference photo is not valid base64 data.") from None
    if not data:
        raise ControlError("bad_reference", "The reference photo is empty.")
    if len(data) > max_bytes:
        raise ControlError(
            "bad_reference", f"The reference photo is larger than {max_bytes // (1024 * 1024)} MB; choose a smaller photo."
        )
    return data


# --- server -> client -----------------------------------------------------------------


def error_message(
    code: str, message: str, request_id: int | None = None, *, retry_after_s: float | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "id": request_id, "code": code, "message": message}
    if retry_after_s is not None:
        out["retry_after_s"] = retry_after_s
    return out


def ack_message(request_id: int | None, note: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "ack", "id": request_id}
    if note:
        out["note"] = note
    return out


def event_message(event: str, message: str) -> dict[str, Any]:
    return {"type": "event", "event": event, "message": message}


def answer_message(sdp: str, session_id: str, note: str | None) -> dict[str, Any]:
    return {"type": "answer", "sdp": sdp, "sdp_type": "answer", "session_id": session_id, "note": note}
