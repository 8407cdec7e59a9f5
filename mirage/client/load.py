"""``python -m mirage load``: N concurrent client sessions against a served Mirage app.

Each session sends the same source (a video file, an image directory, or by
default the astronaut photo with scripted head motion), stamped with frame
numbers, and measures what comes back. By default (``--encode once``) the
stamped clip is encoded to VP8 once and every session replays the packets, so
the load generator's CPU does not compete with the server it measures;
``--encode live`` runs one live encoder per session, as a camera client does.
After a short warm-up (first keyframes, lazy model loads), each session is
measured for ``--seconds``; the report is
``{"sessions": [{"fps", "g2g_p50_ms", "g2g_p95_ms", "frames", "dropped",
"errors", ...}], ...}``. The exit status is 1 when a session failed to connect
or received no frame at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mirage.env import read_str

if TYPE_CHECKING:  # the parser is built on every CLI start: aiortc is imported only to run
    import numpy as np

    from mirage.client.encoded import EncodedClip
    from mirage.client.session import MirageSession, SessionOptions
    from mirage.client.sources import VideoSource

logger = logging.getLogger(__name__)


def add_load_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``load`` subcommand on the CLI's subparsers."""
    p = subparsers.add_parser("load", help="run N concurrent sessions against a served Mirage app and report fps/latency")
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--reference", required=True, type=Path, help="reference photo (JPEG/PNG/WebP) to put on")
    p.add_argument("--source", type=Path, default=None, help="video file or image directory to send (default: synthetic astronaut clip)")
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per session (default 30)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds after connecting that are not measured (default 2)")
    p.add_argument("--json", dest="json_out", required=True, type=Path, help="where to write the JSON report")
    p.add_argument("--api-key", default=None, help="API key when the server requires one (default: $MIRAGE_API_KEY)")
    p.add_argument("--swapper", default="mesh", help="swapper to ask for (mesh or inswapper)")
    p.add_argument("--max-faces", type=int, default=1)
    p.add_argument("--fallback", default="blur", choices=["blur", "hold", "passthrough"])
    p.add_argument("--fps", type=float, default=None, help="send rate (default: the source's)")
    p.add_argument("--size", default="640x480", help="frame size of the default clip, WxH (default 640x480)")
    p.add_argument("--audio", action="store_true", help="also send an audio track (a 440 Hz tone)")
    p.add_argument(
        "--audio-file",
        type=Path,
        default=None,
        help="send this WAV (speech, looped) as the audio track instead of the tone (implies --audio)",
    )
    p.add_argument("--voice", default=None, help="voice to ask for: off, a preset (deep, low, disguise, high, bright), custom or rvc:NAME")
    p.add_argument(
        "--pitch", type=float, default=None, help="pitch shift in semitones (without --voice: the DSP disguise with exactly this)"
    )
    p.add_argument(
        "--formant", type=float, default=None, help="formant factor, 0.7-1.4 (without --voice: the DSP disguise with exactly this)"
    )
    p.add_argument("--record-audio", type=Path, default=None, help="write each session's returned audio to DIR/session-N.wav")
    p.add_argument(
        "--enhancer", default=None, help="face enhancer to ask for once each session is up (none or a name /config lists)"
    )
    p.add_argument("--fidelity", type=float, default=None, help="CodeFormer's fidelity weight w with --enhancer, 0-1")
    p.add_argument(
        "--av-marks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put an A/V mark (60 ms silence + 40 ms tone burst, once a second) in the sent audio and report "
        "av_offset_ms per session (default: on with --audio, off with --audio-file, whose speech it would cut)",
    )
    p.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for each session to come up")
    p.add_argument(
        "--retry-for",
        type=float,
        default=60.0,
        help="while the server is full, retry a session this many seconds (back-off with jitter, never before the "
        "server's retry_after_s hint), and move a session the server ends with 'server_shutdown'/1001 to another "
        "replica at once; 0: no retries (default 60)",
    )
    p.add_argument(
        "--encode",
        choices=["once", "live"],
        default="once",
        help="once (default): encode the stamped clip to VP8 once and replay it in every session, so the load "
        "generator's CPU does not compete with the server it measures; live: each session runs its own VP8 "
        "encoder, as a real camera client does (an H.264-preferring server always gets live encoding)",
    )
    return p


@dataclass(frozen=True)
class LoadPlan:
    """A load run, typed (the CLI's arguments after validation)."""

    url: str
    reference: bytes
    source: VideoSource
    sessions: int
    seconds: float
    warmup: float
    options: SessionOptions
    api_key: str | None = None
    fps: float | None = None
    audio: bool = False
    connect_timeout_s: float = 60.0
    #: Retry a refused session this long (mirage.client.retry); 0: no retries, no moves.
    retry_for_s: float = 60.0
    #: "once": encode the clip once and replay it in every session; "live": one encoder per session.
    encode: Literal["once", "live"] = "once"
    #: With ``encode="once"``: a clip encoded earlier (several runs share one encode); else one is made.
    encoded: EncodedClip | None = None
    #: 48 kHz mono speech sent (looped) instead of the tone; implies ``audio``.
    audio_samples: np.ndarray | None = None
    #: ``set_options`` voice fields sent once each session is up (empty: the server's default voice).
    voice_options: dict[str, Any] | None = None
    #: ``set_options`` enhancer fields sent once each session is up (empty: no enhancer).
    enhance_options: dict[str, Any] | None = None
    #: Folder for each session's returned audio (``session-N.wav``).
    record_audio: Path | None = None
    #: A/V marks in the sent audio, for ``av_offset_ms`` (mirage.client.avsync).
    av_marks: bool = False


def clip_period(source: VideoSource, fps: float, seconds: float = 10.0) -> int:
    """Frames to pre-encode: about ``seconds`` of video, a whole number of the source's loops when known.

    A clip cut mid-loop would jump back at every replay (a head that teleports); a
    source that knows its loop length (``len()``) gets a seamless one.
    """
    period = max(1, int(round(seconds * fps)))
    try:
        loop = len(source)  # type: ignore[arg-type]
    except TypeError:
        return period
    return max(1, round(period / loop)) * loop if 0 < loop <= period else period


async def _one_session(plan: LoadPlan, index: int, encoded: EncodedClip | None = None) -> dict[str, Any]:
    from mirage.client.session import ClientConfig, MirageSession, SessionError, SessionRefused, SessionStats
    from mirage.webrtc.guard import IcePolicy

    config = ClientConfig(
        url=plan.url,
        reference=plan.reference,
        source=plan.source,
        api_key=plan.api_key,
        options=plan.options,
        audio=plan.audio or plan.audio_samples is not None,
        tone_hz=440.0 if plan.audio else None,
        audio_samples=plan.audio_samples,
        record_audio=plan.record_audio is not None,
        av_marks=plan.av_marks,
        fps=plan.fps,
        connect_timeout_s=plan.connect_timeout_s,
        encoded=encoded,
        ice=IcePolicy.from_env(os.environ),  # MIRAGE_ICE_HOST_ADDRESSES / MIRAGE_ICE_ANNOUNCED_ADDRESS
    )
    from mirage.client.retry import RetryPolicy, RetryStats, open_with_retry, plain_message, reconnect_delay

    retry_stats = RetryStats()

    def on_wait(seconds: float, exc: SessionRefused) -> None:
        print(f"mirage load: session {index}: {plain_message(exc)}; retrying in {seconds:.1f} s", file=sys.stderr)

    async def open_once() -> MirageSession:
        attempt = MirageSession(config)
        await attempt.connect()  # closes itself on failure
        return attempt

    async def open_session() -> MirageSession:
        if plan.retry_for_s <= 0:
            retry_stats.attempts += 1
            return await open_once()
        policy = RetryPolicy(give_up_after_s=plan.retry_for_s)
        return await open_with_retry(open_once, policy, on_wait=on_wait, stats=retry_stats)

    record: dict[str, Any] = {"index": index, "connected": False, "error": None, "code": None}
    try:
        session = await open_session()
    except SessionRefused as exc:
        record.update(error=exc.message, code=exc.code, retries=retry_stats.retries)
        record.update(SessionStats().summary())
        return record
    except SessionError as exc:
        record.update(error=str(exc), code="connection_failed", retries=retry_stats.retries)
        record.update(SessionStats().summary())
        return record
    record.update(connected=True, session_id=session.session_id, note=session.note)
    reconnect_gaps_ms: list[float] = []
    frames_before = 0
    try:
        if plan.voice_options:
            reply = await session.set_options(**plan.voice_options)
            if reply.get("type") != "ack":
                record["error"] = f"the server refused the voice: {reply.get('message', reply)}"
                session.stats.errors += 1
        if plan.enhance_options:
            reply = await session.set_options(**plan.enhance_options)
            if reply.get("type") != "ack":
                record["error"] = f"the server refused the enhancer: {reply.get('message', reply)}"
                session.stats.errors += 1
        await _sleep_unless_ended(session, plan.warmup)
        session.stats = SessionStats()  # measure only the steady state
        end_at = time.monotonic() + plan.seconds
        while True:
            await _sleep_unless_ended(session, end_at - time.monotonic())
            if not session.ended.is_set() or time.monotonic() >= end_at:
                break
            saw_shutdown = any(e.get("event") == "server_shutdown" for e in session.events)
            if reconnect_delay(session.close_code, saw_shutdown) is None or plan.retry_for_s <= 0:
                break
            # The replica is going away: move to another one at once, without anyone asking.
            last_frame = session.stats.last_at
            frames_before += session.stats.frames
            await session.close()
            print(f"mirage load: session {index}: the server is moving it (close {session.close_code}); "
                  "reconnecting now", file=sys.stderr)
            try:
                session = await open_session()
            except SessionError as exc:
                record["error"] = f"could not reconnect after the server moved the session: {exc}"
                session.stats.errors += 1
                break
            with contextlib.suppress(SessionError):
                await session.wait_frames(1, timeout=max(1.0, end_at - time.monotonic()))
            if last_frame is not None and session.stats.first_at is not None:
                reconnect_gaps_ms.append(round((session.stats.first_at - last_frame) * 1000.0, 1))
        if session.ended.is_set() and time.monotonic() < end_at:
            record["error"] = f"the session ended early (close code {session.close_code}: {session.close_reason or 'no reason'})"
            session.stats.errors += 1
    finally:
        stats = session.stats
        await session.close()
    record.update(
        retries=retry_stats.retries,
        retry_wait_s=round(retry_stats.waited_s, 2),
        reconnects=len(reconnect_gaps_ms),
        reconnect_gap_ms=reconnect_gaps_ms,
        frames_total=frames_before + stats.frames,
        final_session_id=session.session_id,
    )
    record.update(stats.summary())
    if config.audio:
        record.update(
            audio_chunks=stats.audio_frames,
            audio_dropped=stats.audio_dropped,
            av_offset_ms=stats.av_offset_summary(),
            audio_g2g_ms=stats.audio_latency_summary(),
        )
    if plan.record_audio is not None:
        record["audio_file"] = _write_returned_audio(plan.record_audio, index, session.returned_audio)
    record.update(
        unstamped=stats.unstamped,
        repeats=stats.repeats,
        server_stats=session.server_stats,
        server_errors=list(session.server_errors)[-5:],
    )
    return record


def _write_returned_audio(folder: Path, index: int, pieces: list[np.ndarray]) -> str | None:
    """``folder/session-N.wav`` (48 kHz mono 16-bit) of what came back; None when nothing did."""
    import numpy as np

    from mirage.voice.audio import write_wav_atomic

    if not pieces:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"session-{index}.wav"
    write_wav_atomic(path, np.concatenate(pieces), 48_000)
    return str(path)


def _voice_plan(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``set_options`` voice fields of ``--voice/--pitch/--formant`` (checked here: one sentence on a bad value)."""
    from mirage.voice.config import VoiceError

    try:
        return voice_plan(args.voice, args.pitch, args.formant)
    except VoiceError as exc:
        raise SystemExit(f"mirage load: {exc}") from None


def voice_plan(voice: str | None, pitch: float | None, formant: float | None) -> dict[str, Any] | None:
    """``set_options`` voice fields for a voice/pitch/formant choice (None: none given); ``VoiceError`` if bad.

    ``pitch``/``formant`` without ``voice`` mean the DSP disguise with exactly those values.
    """
    from mirage.voice.config import parse_voice

    if voice is None and pitch is None and formant is None:
        return None
    selection = parse_voice(voice, pitch, formant)
    if selection.kind == "off":
        return {"voice": "off"}
    options: dict[str, Any] = {"voice": voice if voice else "custom"}
    if pitch is not None:
        options["pitch_semitones"] = float(pitch)
    if formant is not None:
        options["formant"] = float(formant)
    return options


def _audio_file(path: Path | None) -> np.ndarray | None:
    from mirage.voice.audio import read_wav, resample
    from mirage.voice.config import VoiceError

    if path is None:
        return None
    try:
        samples, rate = read_wav(path)
    except VoiceError as exc:
        raise SystemExit(f"mirage load: {exc}") from None
    return resample(samples, rate, 48_000)


async def _sleep_unless_ended(session: MirageSession, seconds: float) -> None:
    try:
        await asyncio.wait_for(session.ended.wait(), max(seconds, 0.0))
    except TimeoutError:
        pass


async def run_plan(plan: LoadPlan) -> dict[str, Any]:
    """Run all sessions concurrently; the report dict (also what ``--json`` writes)."""
    encoded = plan.encoded if plan.encode == "once" else None
    if plan.encode == "once" and encoded is None:
        from mirage.client.encoded import encode_clip

        period = clip_period(plan.source, plan.fps or plan.source.fps)
        encoded = await asyncio.to_thread(encode_clip, plan.source, period)
        logger.info("encoded a %d-frame VP8 clip (%.0f kB) for all sessions", period, sum(map(len, encoded.packets)) / 1e3)
    started = time.time()
    records = await asyncio.gather(*(_one_session(plan, i, encoded) for i in range(plan.sessions)))
    return {
        "url": plan.url,
        "sessions": records,
        "retries": sum(int(r.get("retries", 0)) for r in records),
        "reconnects": sum(int(r.get("reconnects", 0)) for r in records),
        "requested_sessions": plan.sessions,
        "seconds": plan.seconds,
        "warmup_s": plan.warmup,
        "source_size": list(plan.source.size),
        "source_fps": plan.fps or plan.source.fps,
        "encode": plan.encode,
        "started_at": started,
        "wall_s": round(time.time() - started, 2),
    }


def _plan_from_args(args: argparse.Namespace) -> LoadPlan:
    from mirage.client.session import SessionOptions
    from mirage.client.sources import astronaut_source, open_source

    if args.sessions < 1:
        raise SystemExit("mirage load: --sessions must be at least 1")
    if args.seconds <= 0:
        raise SystemExit("mirage load: --seconds must be positive")
    try:
        reference = args.reference.read_bytes()
    except OSError as exc:
        raise SystemExit(f"mirage load: cannot read the reference photo {args.reference}: {exc.strerror}") from None
    try:
        width, height = (int(v) for v in str(args.size).lower().split("x"))
    except ValueError:
        raise SystemExit(f"mirage load: --size must look like 640x480 (got {args.size!r})") from None
    if args.record_audio is not None and args.record_audio.exists() and not args.record_audio.is_dir():
        raise SystemExit(f"mirage load: --record-audio {args.record_audio} is not a folder")
    voice_options = _voice_plan(args)
    enhance_options: dict[str, Any] = {}
    if getattr(args, "enhancer", None):
        enhance_options["enhancer"] = args.enhancer
    if getattr(args, "fidelity", None) is not None:
        if not 0.0 <= args.fidelity <= 1.0:
            raise SystemExit("mirage load: --fidelity must be between 0 and 1")
        enhance_options["fidelity"] = args.fidelity
    audio_samples = _audio_file(args.audio_file)
    fps = args.fps or 30.0
    source = open_source(args.source, fps=args.fps) if args.source else astronaut_source(width, height, fps)
    return LoadPlan(
        url=args.url,
        reference=reference,
        source=source,
        sessions=args.sessions,
        seconds=args.seconds,
        warmup=max(args.warmup, 0.0),
        options=SessionOptions(swapper=args.swapper, max_faces=args.max_faces, fallback=args.fallback),
        api_key=args.api_key or read_str(os.environ, "MIRAGE_API_KEY", strip=False),
        fps=args.fps,
        audio=args.audio,
        connect_timeout_s=args.connect_timeout,
        retry_for_s=max(0.0, args.retry_for),
        encode=args.encode,
        audio_samples=audio_samples,
        voice_options=voice_options,
        enhance_options=enhance_options or None,
        record_audio=args.record_audio,
        av_marks=bool(args.av_marks) if args.av_marks is not None else (args.audio and audio_samples is None),
    )


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"{'session':>7} {'fps':>6} {'p50 ms':>7} {'p95 ms':>7} {'frames':>6} {'dropped':>7} {'errors':>6} "
        f"{'retries':>7} {'moves':>5}  status"
    ]
    for record in report["sessions"]:
        def fmt(value: Any) -> str:
            return "-" if value is None else f"{value}"

        status = "ok" if record["connected"] and not record["error"] else (record["error"] or "failed")
        lines.append(
            f"{record['index']:>7} {fmt(record['fps']):>6} {fmt(record['g2g_p50_ms']):>7} {fmt(record['g2g_p95_ms']):>7} "
            f"{record['frames']:>6} {record['dropped']:>7} {record['errors']:>6} "
            f"{record.get('retries', 0):>7} {record.get('reconnects', 0):>5}  {status}"
        )
    return "\n".join(lines)


def run_load(args: argparse.Namespace) -> int:
    """Entry point of ``mirage load``; 0 when every session connected and received frames."""
    plan = _plan_from_args(args)
    report = asyncio.run(run_plan(plan))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2, default=str))
    print(_table(report))
    failed = [r for r in report["sessions"] if not r["connected"] or r["frames"] == 0]
    for record in failed:
        reason = record["error"] or "no frame was received"
        print(f"mirage load: session {record['index']} failed: {reason}", file=sys.stderr)
    return 1 if failed else 0
