"""A seeded SDP/offer fuzzer through the real signalling (1,000+ cases against the served app).

Every case opens ``/ws/session`` and sends one mutated offer (SDP mutations and
JSON-level ones: huge numbers, wrong types, missing fields). The server must
answer (then the fuzzer hangs up) or refuse with ``bad_offer``/``bad_request``/
``bad_reference`` and close 4400, with a one-sentence message; never 1011,
never ``internal``, never a traceback or an unhandled task exception in any log,
and the ingress comes back to its baseline (sessions, peer connections, fds,
threads, RSS).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pytest

from tests.integration.peer import make_offer
from tests.integration.served import ServedApp
from tests.reliability.served_checks import Baseline, LogWindow

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(400)]

CASES = 1000
SEED = 20261201
CONCURRENCY = 4
REFUSALS = {"bad_offer", "bad_request", "bad_reference"}
# A tiny (faceless) reference: offers that get through the SDP checks are refused as no_face
# by the swapper; one in ten uses the real reference and so really starts (then ends) a session.
GREY_PNG_B64 = base64.b64encode(cv2.imencode(".png", np.full((48, 48, 3), 127, np.uint8))[1].tobytes()).decode()


@dataclass
class Outcome:
    kind: str  # "answer" | "error" | "closed"
    code: str | None
    message: str | None
    close_code: int | None
    retry_after_s: float | None = None


def _mutate_sdp(sdp: str, rng: random.Random) -> str:
    if not sdp:
        return rng.choice(["", "v=0"])
    lines = sdp.split("\r\n")
    op = rng.randrange(20)
    if op == 0 and len(lines) > 1:
        del lines[rng.randrange(len(lines))]
    elif op == 1:
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
    elif op == 2 and len(lines) > 2:
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == 3:
        return sdp[: rng.randrange(len(sdp))]
    elif op == 4:
        chars = list(sdp)
        for _ in range(rng.randrange(1, 12)):
            chars[rng.randrange(len(chars))] = rng.choice(["\x00", "\u2603", " ", ":", "=", "\n", "9", "a", "\ufeff"])
        return "".join(chars)
    elif op == 5:
        lines.insert(rng.randrange(len(lines)), rng.choice(["a=", "a=" + "x" * 5000, "b=AS:-1", "m=", "x=y", "a=\x7f"]))
    elif op == 6:
        huge = rng.choice(["9" * 40, "9" * 5000, "-1", "0", "4294967296", "18446744073709551616"])
        return re.sub(r"\b\d+\b", lambda m: huge if rng.random() < 0.2 else m.group(0), sdp)
    elif op == 7:
        lines = [line for line in lines if not line.startswith("a=fingerprint")]
    elif op == 8:
        fp = rng.choice(["a=fingerprint:sha-256 00", "a=fingerprint:md5 " + ":".join(["AB"] * 16), "a=fingerprint:",
                         "a=fingerprint:sha-256 " + ":".join(["ZZ"] * 32), "a=fingerprint:sha-1 " + ":".join(["AB"] * 20)])
        lines = [fp if line.startswith("a=fingerprint") else line for line in lines]
    elif op == 9:
        lines = [
            (line.split(" ")[0] + " " + rng.choice(["0", "9", "65536", "-5", "x"]) + " "
             + rng.choice(["UDP/TLS/RTP/SAVPF", "RTP/AVP", "TCP", "UDP/DTLS/SCTP", ""]) + " "
             + rng.choice(["96", "", "999", "a b", "0 8 96 97"]))
            if line.startswith("m=") and rng.random() < 0.5 else line
            for line in lines
        ]
    elif op == 10:
        d = rng.choice(["a=sendrecv", "a=recvonly", "a=sendonly", "a=inactive", "a=bogus"])
        lines = [d if line in ("a=sendrecv", "a=recvonly", "a=sendonly") else line for line in lines]
    elif op == 11:
        return sdp.upper() if rng.random() < 0.5 else sdp.lower()
    elif op == 12:
        return sdp.replace("\r\n", rng.choice(["\n", "\r", " ", ""]))
    elif op == 13:
        sections = sdp.split("m=")
        return sdp + ("m=" + sections[-1]) * rng.randrange(2, 40)
    elif op == 14:
        return rng.choice(["", " ", "\r\n", "v=0", "v=0\r\n" * 1000])
    elif op == 15:
        lines = [
            (line.split(":")[0] + ":" + rng.choice(["", "x", "y" * 600, "\u00e9\u00e9\u00e9\u00e9"]))
            if line.startswith(("a=ice-ufrag", "a=ice-pwd")) else line
            for line in lines
        ]
    elif op == 16:
        lines = [
            re.sub(r"(\d+\.\d+\.\d+\.\d+|\d+ typ \w+)", rng.choice(["999.1.1.1 1 typ host", "0.0.0.0", "1 typ bogus",
                                                                    "::zz", "127.0.0.1 0 typ relay"]), line)
            if line.startswith("a=candidate") else line
            for line in lines
        ]
    elif op == 17:
        s = rng.choice(["a=setup:bogus", "a=setup:passive", "a=setup:active", "a=setup:holdconn", "a=setup:"])
        lines = [s if line.startswith("a=setup") else line for line in lines]
    elif op == 18:
        lines = [
            re.sub(r"a=rtpmap:(\d+) (\S+)/\d+", lambda m: f"a=rtpmap:{rng.choice(['999', m.group(1), '-1'])} "
                   f"{m.group(2)}/{rng.choice(['0', '90000', '1' * 30])}", line)
            for line in lines
        ]
    else:
        for _ in range(rng.randrange(2, 6)):
            lines = _mutate_sdp("\r\n".join(lines), rng).split("\r\n")
    return "\r\n".join(lines)


def _case(base_sdp: str, rng: random.Random, api_key: str, real_reference: str) -> str:
    """One message (JSON text) for the fuzzer."""
    reference = real_reference if rng.random() < 0.1 else GREY_PNG_B64
    msg: dict[str, Any] = {"type": "offer", "sdp": _mutate_sdp(base_sdp, rng), "sdp_type": "offer",
                           "reference_b64": reference, "api_key": api_key}
    if rng.random() < 0.15:
        kind = rng.randrange(10)
        if kind == 0:
            msg["sdp"] = rng.choice([None, 5, ["v=0"], {"sdp": "v=0"}, True])
        elif kind == 1:
            msg["sdp_type"] = rng.choice(["answer", "pranswer", "rollback", "", 1])
        elif kind == 2:
            msg["options"] = rng.choice([{"max_faces": "2"}, {"max_faces": True}, {"mouth_mask": "yes"},
                                         {"swapper": "nope"}, {"fallback": 0}, {"unknown": 1}, [], "x", None])
        elif kind == 3:
            del msg[rng.choice(["sdp", "reference_b64", "type"])]
        elif kind == 4:
            msg["extra"] = "x" * rng.randrange(1, 3000)
        elif kind == 5:
            msg["api_key"] = rng.choice([5, ["k"], {"k": 1}, True])
        elif kind == 6:
            msg["reference_b64"] = rng.choice(["", "!!", "=" * 8, "data:image/png;base64,", "AAAA" * 3])
        elif kind == 7:
            text = json.dumps(msg)
            return text.replace('"sdp_type"', '"n": ' + "7" * rng.choice([19, 400, 4400, 6000]) + ', "sdp_type"', 1)
        elif kind == 8:
            return "[" * rng.randrange(10, 50000)
        else:
            return json.dumps(msg)[: rng.randrange(1, 200)]
    return json.dumps(msg)


async def _probe(ws_url: str, text: str) -> Outcome:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(ws_url, max_size=2**23, open_timeout=30) as ws:
        try:
            await ws.send(text)
        except ConnectionClosed:
            pass
        first: dict[str, Any] | None = None
        try:
            raw = await asyncio.wait_for(ws.recv(), 60)
            first = json.loads(raw)
        except ConnectionClosed:
            pass
        if first is not None and first.get("type") == "answer":
            await ws.close()
            return Outcome("answer", None, None, ws.close_code)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except ConnectionClosed:
            pass
        if first is None:
            return Outcome("closed", None, None, ws.close_code)
        return Outcome("error", first.get("code"), first.get("message"), ws.close_code, first.get("retry_after_s"))


def test_offer_fuzzer(served: ServedApp) -> None:
    from tests.integration.peer import reference_bytes

    baseline = Baseline.take(served)
    logs = LogWindow()
    base_sdp = asyncio.run(make_offer())
    real_reference = base64.b64encode(reference_bytes()).decode("ascii")
    rng = random.Random(SEED)
    cases = [_case(base_sdp, rng, served.api_key, real_reference) for _ in range(CASES)]

    async def run() -> list[Outcome]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(text: str) -> Outcome:
            async with gate:
                return await _probe(served.ws_url, text)

        return await asyncio.gather(*(one(t) for t in cases))

    outcomes = asyncio.run(run())
    tally = Counter((o.kind, o.code, o.close_code) for o in outcomes)
    bad = [(i, o) for i, o in enumerate(outcomes) if not (
        (o.kind == "answer")
        or (o.kind == "error" and (o.code in REFUSALS or o.code == "no_face") and o.close_code == 4400
            and o.message and len(o.message) < 300 and "Traceback" not in o.message)
        # Offers that got through start real sessions: with 4 at once, a fourth may find the replica full.
        or (o.kind == "error" and o.code == "server_full" and o.close_code == 1013 and o.retry_after_s)
    )]
    assert not bad, f"{len(bad)} cases without a clean refusal, e.g. {bad[:5]} (tally {tally})"
    assert sum(1 for o in outcomes if o.kind == "error") > CASES // 2, tally
    trouble = logs.trouble()
    assert not trouble, "\n".join(trouble[:20])
    baseline.check(served)
