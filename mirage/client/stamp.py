"""Frame-number stamp: a band of black/white blocks in the top-left of a frame.

The sender writes a 16-bit frame number into the pixels so the receiver can
tell which sent frame a received frame came from, whatever the network, the
server and the codecs did in between (glass-to-glass latency, drops).

Layout at the sender's width (640 px by default): 18 blocks of 16x16 px in the
top 16 rows starting at x=0: a white start block, 16 data blocks (most
significant bit first, white = 1), a black end block. The reader samples the
centre of each block relative to the frame's width, so a frame the server
downscaled (e.g. to 512x384) still reads. Pure black/white survives VP8/H264
and YUV 4:2:0; the framing blocks and a decisiveness margin reject frames that
carry no stamp (or one a swap painted over).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Side of one block in pixels at the sender's width.
BLOCK = 16
#: Number of data bits (frame numbers wrap modulo 2**BITS).
BITS = 16
#: Start block + data + end block.
BLOCKS = BITS + 2
#: The stamp's wrap-around modulus.
MODULUS = 1 << BITS
#: Pixels (at the sender) the band covers: x in [0, BAND_WIDTH), y in [0, BLOCK).
BAND_WIDTH = BLOCKS * BLOCK
#: Width the sender is assumed to have used when the reader is not told.
DEFAULT_SENDER_WIDTH = 640

_WHITE = 255
_BLACK = 0
#: A sampled block must be at least this far from mid-grey to count as a bit.
_MARGIN = 48


def stamp(frame: npt.NDArray[np.uint8], number: int) -> npt.NDArray[np.uint8]:
    """Return a copy of ``frame`` (BGR or grey) with ``number % 2**16`` in its top-left band."""
    height, width = frame.shape[:2]
    if height < BLOCK or width < BLOCKS * BLOCK:
        raise ValueError(f"a {width}x{height} frame is too small for the {BLOCKS * BLOCK}x{BLOCK} px stamp")
    out = frame.copy()
    value = int(number) % MODULUS
    levels = [_WHITE] + [_WHITE if (value >> (BITS - 1 - i)) & 1 else _BLACK for i in range(BITS)] + [_BLACK]
    for index, level in enumerate(levels):
        out[:BLOCK, index * BLOCK : (index + 1) * BLOCK] = level
    return out


def _luma_band(frame: npt.NDArray[np.uint8], rows: int) -> npt.NDArray[np.float32]:
    band = np.asarray(frame[:rows], dtype=np.float32)
    if band.ndim == 3:
        # BGR → luma (BT.601 weights); only the band is converted.
        band = band[..., 0] * 0.114 + band[..., 1] * 0.587 + band[..., 2] * 0.299
    return band


def read_stamp(
    frame: npt.NDArray[np.uint8], sender_width: int = DEFAULT_SENDER_WIDTH
) -> int | None:
    """The frame number stamped in ``frame`` (BGR or luma plane), or None when there is none.

    ``sender_width`` is the width the frame had when it was stamped; the reader
    scales the block grid by ``frame width / sender_width``.
    """
    if frame.ndim not in (2, 3) or frame.shape[0] < 2 or frame.shape[1] < 2:
        return None
    scale = frame.shape[1] / float(sender_width)
    block = BLOCK * scale
    if block < 4.0 or BLOCKS * block > frame.shape[1] + 0.5 or block > frame.shape[0] + 0.5:
        return None
    band = _luma_band(frame, int(np.ceil(block)))
    # Sample the central half of each block: edges ring after lossy coding.
    half = max(block / 4.0, 1.0)
    cy = block / 2.0
    y0, y1 = int(round(cy - half)), int(round(cy + half))
    samples = []
    for index in range(BLOCKS):
        cx = (index + 0.5) * block
        x0, x1 = int(round(cx - half)), int(round(cx + half))
        samples.append(float(band[y0:y1, x0:x1].mean()))
    if any(abs(s - 128.0) < _MARGIN for s in samples):
        return None
    if samples[0] < 128.0 or samples[-1] > 128.0:
        return None
    value = 0
    for s in samples[1:-1]:
        value = (value << 1) | (1 if s > 128.0 else 0)
    return value


def frame_distance(later: int, earlier: int, modulus: int = MODULUS) -> int:
    """Forward distance from ``earlier`` to ``later`` on a counter wrapping at ``modulus``.

    Live streams wrap at the 16-bit ``MODULUS``; a pre-encoded clip's stamps
    wrap at its loop length (see :mod:`mirage.client.encoded`).
    """
    return (int(later) - int(earlier)) % modulus
