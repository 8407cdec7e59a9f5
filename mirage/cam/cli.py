"""``mirage cam``: your swapped face as a virtual camera (and your voice as a microphone).

Wiring: :func:`add_cam_parser` registers the subcommand on the main CLI's
subparsers and :func:`run_cam` runs it; ``python -m mirage.cam`` runs it alone.
Every expected failure prints one sentence on stderr and exits with 1; Ctrl-C
stops cleanly with exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

from mirage.env import read_str
from mirage.errors import InvalidImageError, MirageError, NoFaceError

logger = logging.getLogger(__name__)

#: The frame-number stamp is 288 px wide at the sender: narrower frames cannot carry it.
MIN_WIDTH = 320


def add_cam_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``cam`` on the CLI's subparsers (imports nothing heavy)."""
    p = subparsers.add_parser(
        "cam",
        help="desktop client: your swapped face as a virtual camera for Zoom, Meet, Discord, OBS",
        description="Send a camera to a Mirage server and put the swapped video on a virtual camera, "
        "a preview window or a file (and the returned audio on an output device).",
    )
    add_cam_arguments(p)
    return p


def add_cam_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--reference", required=True, type=Path, help="photo of the face to put on (JPEG/PNG/WebP)")
    p.add_argument("--camera", default="0", help="camera index (0), device path (/dev/video2), or a video file to loop (default 0)")
    p.add_argument("--width", type=int, default=640, help="frame width sent and written (default 640)")
    p.add_argument("--height", type=int, default=480, help="frame height sent and written (default 480)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate (default 30)")
    p.add_argument("--api-key", default=None, help="API key when the server requires one (default: $MIRAGE_API_KEY)")
    p.add_argument(
        "--sink",
        default="virtual",
        help="virtual (virtual camera; virtual:/dev/video10 picks one), window (preview), or file:OUT.mp4 (default virtual)",
    )
    p.add_argument(
        "--audio-out",
        default=None,
        metavar="DEVICE",
        help="play the returned (converted) voice on this output device, index or name ('default'); a virtual "
        "cable or null sink there is the call's microphone; file:OUT.wav writes it to a file instead",
    )
    p.add_argument(
        "--audio-in",
        default=None,
        metavar="DEVICE",
        help="microphone to send (index or name; default: the default input when --audio-out is given); "
        "file:IN.wav sends that file, looped",
    )
    p.add_argument("--voice", default=None, help="voice to ask for: off, a preset (deep, low, disguise, high, bright), custom or rvc:NAME")
    p.add_argument("--pitch", type=float, default=None, help="pitch shift in semitones (alone: the DSP disguise with exactly this)")
    p.add_argument("--formant", type=float, default=None, help="formant factor 0.7-1.4 (alone: the DSP disguise with exactly this)")
    p.add_argument(
        "--fallback",
        choices=["blur", "passthrough"],
        default="blur",
        help="while connecting/reconnecting: blur the face (default) or show the picture as it is",
    )
    p.add_argument("--swapper", default="mesh", help="swapper to ask the server for (mesh or inswapper)")
    p.add_argument("--max-faces", type=int, default=1, help="swap up to N faces (default 1)")
    p.add_argument("--mouth-mask", action="store_true", help="keep your own mouth (mesh swapper)")
    p.add_argument("--seconds", type=float, default=None, help="stop after S seconds (demos, tests)")


def _fail(message: str) -> int:
    print(f"mirage: {message}", file=sys.stderr)
    return 1


def _check_numbers(args: argparse.Namespace) -> str | None:
    if args.width < MIN_WIDTH or args.height < 120:
        return f"--width must be at least {MIN_WIDTH} and --height at least 120 (got {args.width}x{args.height})."
    if args.width % 2 or args.height % 2:
        return f"--width and --height must be even numbers (got {args.width}x{args.height})."
    if not 1.0 <= args.fps <= 60.0:
        return f"--fps must be between 1 and 60 (got {args.fps:g})."
    if args.seconds is not None and args.seconds <= 0:
        return "--seconds must be positive."
    if args.max_faces < 1:
        return "--max-faces must be at least 1."
    if (args.voice is not None or args.pitch is not None or args.formant is not None) and args.audio_out is None \
            and args.audio_in is None:
        return "--voice, --pitch and --formant need audio: give --audio-out (and --audio-in for another microphone)."
    return None


def load_reference(path: Path) -> bytes:
    """The reference photo's bytes, checked here first: a readable image with at least one face.

    The server checks again; checking here stops before any device is opened.
    The photo is only held in memory (never written or logged).
    """
    from mirage.detect.blazeface import BlazeFaceConfig, BlazeFaceDetector
    from mirage.imageio import decode_image

    try:
        data = path.expanduser().read_bytes()
    except FileNotFoundError:
        raise InvalidImageError(f"The reference photo {path} does not exist.") from None
    except OSError as exc:
        raise InvalidImageError(f"The reference photo {path} cannot be read ({exc.strerror or exc}).") from None
    image = decode_image(data)
    for model in ("short", "full"):  # short range first (selfies); full range finds smaller faces
        if BlazeFaceDetector(BlazeFaceConfig(model=model)).detect([image])[0]:
            return data
    raise NoFaceError(f"No face was found in the reference photo {path.name}; choose a photo with one clearly visible face.")


def run_cam(args: argparse.Namespace) -> int:
    """Run the desktop client; 0 on a clean stop, 1 with one sentence on stderr otherwise."""
    from mirage.cam.errors import CamError
    from mirage.client.session import SessionFailed, SessionRefused

    problem = _check_numbers(args)
    if problem:
        return _fail(problem)
    try:
        return _run(args)
    except SessionRefused as exc:
        from mirage.cam.app import describe_refusal

        return _fail(describe_refusal(exc, args.url))
    except SessionFailed as exc:
        return _fail(f"{str(exc).rstrip('.')}.")
    except (CamError, MirageError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("mirage: stopped.", file=sys.stderr)
        return 0


def _run(args: argparse.Namespace) -> int:
    from mirage.cam.app import CamApp, CamSettings
    from mirage.cam.audio import open_microphone
    from mirage.cam.capture import Capture, CaptureConfig
    from mirage.cam.fallback import FallbackConfig, FallbackRenderer
    from mirage.cam.sinks import SinkSpec, open_audio_sink, open_sink
    from mirage.cam.status import StatusLine
    from mirage.client.load import voice_plan
    from mirage.client.session import SessionOptions

    voice_options = voice_plan(args.voice, args.pitch, args.formant)  # VoiceError: one sentence
    reference = load_reference(args.reference)
    spec = SinkSpec.parse(args.sink)
    api_key = args.api_key if args.api_key is not None else read_str(os.environ, "MIRAGE_API_KEY", strip=False)
    settings = CamSettings(
        url=args.url.rstrip("/"),
        reference=reference,
        width=args.width,
        height=args.height,
        fps=args.fps,
        api_key=api_key,
        options=SessionOptions(swapper=args.swapper, max_faces=args.max_faces, mouth_mask=args.mouth_mask, fallback=args.fallback),
        seconds=args.seconds,
        voice_options=voice_options,
    )
    status = StatusLine()
    with contextlib.ExitStack() as stack:
        fallback = FallbackRenderer(FallbackConfig(policy=args.fallback)).load()
        sink = open_sink(spec, args.width, args.height, args.fps)
        stack.callback(sink.close)
        capture = Capture(CaptureConfig(args.camera, args.width, args.height, args.fps)).open()
        stack.callback(capture.close)
        audio_sink = None
        microphone = None
        if args.audio_out is not None:
            audio_sink = open_audio_sink(args.audio_out)
            stack.callback(audio_sink.close)
        if args.audio_in is not None or args.audio_out is not None:
            microphone = open_microphone(args.audio_in)
            stack.callback(microphone.close)
        status.notice(f"Mirage: {capture.description} -> {sink.name}; connecting to {settings.url} ...")
        app = CamApp(settings, capture, sink, fallback, audio_sink=audio_sink, microphone=microphone, status=status)
        try:
            asyncio.run(app.run())
        except KeyboardInterrupt:
            status.notice("Stopped.")
        else:
            status.notice("Stopped." if settings.seconds is None else f"Done after {settings.seconds:g} s.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mirage.cam``: the ``cam`` subcommand alone."""
    parser = argparse.ArgumentParser(prog="mirage cam", description=add_cam_parser.__doc__)
    add_cam_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_cam(args)
