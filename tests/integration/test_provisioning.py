"""Model provisioning against a real HTTP server on 127.0.0.1 (no mocks).

The server serves random bytes; a temporary manifest points at it. Covered:
good download (verified, sentinel + meta), wrong checksum, a connection dropped
half-way, two processes racing for one file (one GET, both succeed), offline,
MIRAGE_PROVISION_FRESH, the sentinel integrity check, persistence via symlink,
url_env overrides, the CLI's status table and error handling.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from mirage.cli_models import main as cli_main
from mirage.errors import ChecksumError, ConfigError, ModelUnavailableError, ProvisioningError
from mirage.weights.manifest import Manifest, load_manifest
from mirage.weights.provision import (
    MISMATCH,
    MISSING,
    NOT_CHECKED,
    SENTINEL,
    SENTINEL_META,
    UNVERIFIED,
    VERIFIED,
    ModelStore,
    ProvisionConfig,
)
from mirage.weights.storage import prepare_storage

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = os.urandom(2 * 1024 * 1024 + 12345)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# --------------------------------------------------------------------------- the server


@dataclass
class Route:
    body: bytes
    mode: str = "ok"  # ok | drop (Content-Length N, closes after N/2) | slow


@dataclass
class ServerState:
    base: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    gets: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, body: bytes = PAYLOAD, mode: str = "ok") -> str:
        self.routes[path] = Route(body, mode)
        return self.base + path


def _handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            path = urlsplit(self.path).path
            with state.lock:
                state.gets[path] += 1
            route = state.routes.get(path)
            if route is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            if route.mode == "drop":
                self.wfile.write(route.body[: len(route.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            step = 128 * 1024
            for start in range(0, len(route.body), step):
                self.wfile.write(route.body[start : start + step])
                if route.mode == "slow":
                    time.sleep(0.05)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[ServerState]:
    state = ServerState()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


# --------------------------------------------------------------------------- helpers


def _entry(name: str, url: str, *, sha256: str | None = PAYLOAD_SHA, size: int | None = len(PAYLOAD), **extra: object) -> dict:
    entry = {
        "name": name,
        "title": extra.pop("title", name.capitalize()),
        "stage": "swap",
        "enables": f"the {name} swapper",
        "file": f"{name}/{name}.onnx",
        "url": url,
        "url_env": f"MIRAGE_{name.upper()}_URL",
        "sha256": sha256,
        "size": size,
        "licence": "non-commercial research use only",
        "commercial_use": False,
    }
    entry.update(extra)
    return entry


def write_manifest(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "models": list(entries)}))
    return path


def make_config(models_dir: Path, **overrides: object) -> ProvisionConfig:
    config = ProvisionConfig(
        models_dir=models_dir,
        persist=False,
        persist_dir=models_dir.parent / "no-volume" / "mirage_models",
        fresh=False,
        offline=False,
        allow_download=True,
        timeout_s=10.0,
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


def make_store(tmp_path: Path, manifest: Manifest | Path, **overrides: object) -> ModelStore:
    if isinstance(manifest, Path):
        manifest = load_manifest(manifest)
    return ModelStore(make_config(tmp_path / "models", **overrides), manifest)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.part"))


# --------------------------------------------------------------------------- downloads


def test_good_download_is_verified_and_writes_sentinel(server: ServerState, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = server.add("/good/model.onnx") + "?token=s3cr3t-token"
    store = make_store(tmp_path, write_manifest(tmp_path, _entry("good", url)))
    caplog.set_level("INFO")

    [result] = store.fetch(["good"])

    final = tmp_path / "models" / "good" / "good.onnx"
    assert result.action == "downloaded" and result.verified == VERIFIED and result.size == len(PAYLOAD)
    assert final.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == []
    assert server.gets["/good/model.onnx"] == 1
    # Sentinel + meta, atomically written, describing what was provisioned.
    assert (store.root / SENTINEL).is_file()
    meta = json.loads((store.root / SENTINEL_META).read_text())
    assert meta["models"]["good"] == {"file": "good/good.onnx", "size": len(PAYLOAD), "sha256": PAYLOAD_SHA, "verified": VERIFIED}
    assert store.sentinel_state()["exists"] and store.sentinel_state()["meta_exists"]
    [row] = store.status(["good"])
    assert row.present and row.verified == VERIFIED and row.size == len(PAYLOAD)
    assert store.ensure_available("good") == final
    # Tokens in query strings never reach the logs.
    assert "s3cr3t" not in caplog.text
    assert "/good/model.onnx?…" in caplog.text
    # A second fetch finds it and does not download again.
    [again] = store.fetch(["good"])
    assert again.action == "present" and server.gets["/good/model.onnx"] == 1
    [check] = store.verify(["good"])
    assert check.ok and check.state == VERIFIED


def test_wrong_checksum_deletes_download_and_names_both_hashes(server: ServerState, tmp_path: Path) -> None:
    wrong = "0" * 64
    url = server.add("/wrong/model.onnx")
    store = make_store(tmp_path, write_manifest(tmp_path, _entry("wrong", url, sha256=wrong)))

    with pytest.raises(ChecksumError) as info:
        store.fetch(["wrong"])

    message = str(info.value)
    assert "wrong" in message and wrong in message and PAYLOAD_SHA in message
    assert not (tmp_path / "models" / "wrong" / "wrong.onnx").exists()
    assert _leftovers(tmp_path) == []
    assert not (store.root / SENTINEL).exists()
    assert store.status(["wrong"])[0].present is False


def test_verify_deletes_a_corrupted_final_file(server: ServerState, tmp_path: Path) -> None:
    url = server.add("/corrupt/model.onnx")
    store = make_store(tmp_path, write_manifest(tmp_path, _entry("corrupt", url)))
    store.fetch(["corrupt"])
    final = store.path("corrupt")
    flipped = bytearray(PAYLOAD)
    flipped[1000] ^= 0xFF
    final.write_bytes(bytes(flipped))  # same size, different bytes

    assert store.status(["corrupt"])[0].verified == NOT_CHECKED  # cache keyed on mtime: no stale "verified"
    [result] = store.verify(["corrupt"])

    assert result.state == MISMATCH and not result.ok
    assert PAYLOAD_SHA in result.message
    assert not final.exists()
    # The next fetch repairs it.
    [repaired] = store.fetch(["corrupt"])
    assert repaired.action == "downloaded" and final.read_bytes() == PAYLOAD


def test_dropped_connection_leaves_nothing_behind(server: ServerState, tmp_path: Path) -> None:
    url = server.add("/drop/model.onnx", mode="drop")
    store = make_store(tmp_path, write_manifest(tmp_path, _entry("drop", url)))

    with pytest.raises(ProvisioningError) as info:
        store.fetch(["drop"])

    assert not isinstance(info.value, ChecksumError)
    message = str(info.value)
    assert "drop" in message and "closed after" in message and str(len(PAYLOAD)) in message
    assert "\n" not in message
    assert not store.path("drop").exists()
    assert _leftovers(tmp_path) == []
    with pytest.raises(ModelUnavailableError, match="downloading it failed"):
        store.ensure_available("drop")
    assert not store.path("drop").exists() and _leftovers(tmp_path) == []


def test_unverified_model_downloads_atomically_and_says_so(server: ServerState, tmp_path: Path) -> None:
    url = server.add("/nohash/model.onnx")
    store = make_store(tmp_path, write_manifest(tmp_path, _entry("nohash", url, sha256=None, size=None)))
    [result] = store.fetch(["nohash"])
    assert result.verified == UNVERIFIED == "unverified (no checksum in manifest)"
    assert store.path("nohash").read_bytes() == PAYLOAD
    [row] = store.status(["nohash"])
    assert row.verified == UNVERIFIED


def _race_worker(manifest_path: str, models_dir: str, name: str, barrier: object, results: object) -> None:
    store = ModelStore(make_config(Path(models_dir)), load_manifest(Path(manifest_path)))
    barrier.wait(timeout=60)  # type: ignore[attr-defined]
    try:
        [result] = store.fetch([name])
        results.put(("ok", result.action, result.seconds))  # type: ignore[attr-defined]
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(("error", repr(exc), 0.0))  # type: ignore[attr-defined]


def test_two_processes_racing_download_once_and_both_succeed(server: ServerState, tmp_path: Path) -> None:
    url = server.add("/race/model.onnx", mode="slow")  # ~1 s: the second process waits on the lock
    manifest_path = write_manifest(tmp_path, _entry("race", url))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_race_worker, args=(str(manifest_path), str(tmp_path / "models"), "race", barrier, results))
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)

    assert sorted(o[:2] for o in outcomes) == [("ok", "downloaded"), ("ok", "present")], outcomes
    waited = next(seconds for _, action, seconds in outcomes if action == "present")
    assert waited > 0.3, outcomes  # it really waited on the lock for the other's download
    assert server.gets["/race/model.onnx"] == 1
    assert (tmp_path / "models" / "race" / "race.onnx").read_bytes() == PAYLOAD
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- offline, fresh, sentinel


def test_offline_missing_optional_model_is_one_clear_sentence(server: ServerState, tmp_path: Path) -> None:
    url = server.add("/offline/inswapper_128_fp16.onnx")
    manifest = write_manifest(
        tmp_path,
        _entry("inswapper_128_fp16", url, title="InSwapper", enables="the inswapper swapper", file="inswapper/inswapper_128_fp16.onnx"),
    )
    config = ProvisionConfig.from_env({"MIRAGE_OFFLINE": "1", "MIRAGE_PERSIST_MODELS": "0", "MIRAGE_MODELS_DIR": str(tmp_path / "models")})
    assert config.offline and not config.persist
    store = ModelStore(config, load_manifest(manifest))

    with pytest.raises(ModelUnavailableError) as info:
        store.ensure_available("inswapper_128_fp16")

    shown = tmp_path / "models" / "inswapper" / "inswapper_128_fp16.onnx"
    assert str(info.value) == (
        f"InSwapper is not provisioned ({shown} missing); the inswapper swapper is disabled. "
        "Run `python -m mirage models fetch inswapper_128_fp16`."
    )
    [row] = store.status()
    assert row.present is False and row.verified == MISSING
    with pytest.raises(ProvisioningError, match="offline mode"):
        store.fetch(["inswapper_128_fp16"])
    assert server.gets["/offline/inswapper_128_fp16.onnx"] == 0


def test_missing_model_with_no_server_disables_the_stage(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/m.onnx"
    store = make_store(tmp_path, write_manifest(tmp_path, _entry("gone", dead, title="Gone")))
    with pytest.raises(ModelUnavailableError) as info:
        store.ensure_available("gone")
    message = str(info.value)
    assert message.startswith("Gone is not provisioned (") and "cannot connect" in message
    assert message.endswith("the gone swapper is disabled.")
    assert not store.path("gone").exists() and _leftovers(tmp_path) == []


def test_fresh_redownloads_and_sentinel_integrity_check(server: ServerState, tmp_path: Path) -> None:
    url = server.add("/fresh/model.onnx")
    manifest = load_manifest(write_manifest(tmp_path, _entry("fresh", url, required=True)))
    path = "/fresh/model.onnx"

    make_store(tmp_path, manifest).provision()  # required and missing: downloaded
    assert server.gets[path] == 1 and (tmp_path / "models" / SENTINEL).is_file()
    assert make_store(tmp_path, manifest).provision() == []  # sentinel + file: nothing to do
    assert server.gets[path] == 1

    fresh = make_store(tmp_path, manifest, fresh=True)
    [result] = fresh.provision()
    assert result.action == "downloaded" and server.gets[path] == 2
    assert (tmp_path / "models" / SENTINEL).is_file()
    fresh.provision()  # fresh acts once per store, not on every call
    assert server.gets[path] == 2

    # Sentinel present but the required file gone: re-provisioned.
    (tmp_path / "models" / "fresh" / "fresh.onnx").unlink()
    store = make_store(tmp_path, manifest)
    assert store.sentinel_state()["required_missing"] == ["fresh"]
    store.provision()
    assert server.gets[path] == 3 and store.path("fresh").read_bytes() == PAYLOAD

    # Downloads off and the required file missing: a clear error, nothing fetched.
    store.path("fresh").unlink()
    with pytest.raises(ModelUnavailableError, match=r"required but not provisioned .*MIRAGE_DOWNLOAD_MODELS=0"):
        make_store(tmp_path, manifest, allow_download=False).provision()
    assert server.gets[path] == 3


def test_url_env_override_is_honoured(server: ServerState, tmp_path: Path) -> None:
    dead = server.add("/override/default.onnx", body=b"")
    server.routes.pop("/override/default.onnx")  # the manifest's default URL answers 404
    mirror = server.add("/override/mirror.onnx")
    manifest = load_manifest(write_manifest(tmp_path, _entry("ovr", dead)))

    with pytest.raises(ProvisioningError, match="HTTP 404"):
        make_store(tmp_path, manifest).fetch(["ovr"])

    config = ProvisionConfig.from_env(
        {"MIRAGE_OVR_URL": mirror, "MIRAGE_PERSIST_MODELS": "0", "MIRAGE_MODELS_DIR": str(tmp_path / "models")}
    )
    [result] = ModelStore(config, manifest).fetch(["ovr"])
    assert result.action == "downloaded"
    assert server.gets["/override/mirror.onnx"] == 1 and server.gets["/override/default.onnx"] == 1


def test_config_from_env_defaults_and_validation(tmp_path: Path) -> None:
    config = ProvisionConfig.from_env({})
    assert config.persist and not config.fresh and not config.offline and config.allow_download
    assert config.persist_dir == Path("/data/mirage_models")
    assert config.models_dir == Path(__file__).resolve().parents[2] / "models"
    with pytest.raises(ConfigError, match="MIRAGE_PERSIST_MODELS must be 1 or 0"):
        ProvisionConfig.from_env({"MIRAGE_PERSIST_MODELS": "maybe"})
    with pytest.raises(ProvisioningError, match="Unknown model 'nope'"):
        ModelStore(ProvisionConfig.from_env({"MIRAGE_REQUIRED_MODELS": "nope"}), load_manifest())


# --------------------------------------------------------------------------- persistence


def test_persist_migrates_and_symlinks_once(tmp_path: Path) -> None:
    models = tmp_path / "app" / "models"
    (models / "inswapper").mkdir(parents=True)
    (models / "inswapper" / "a.onnx").write_bytes(b"weights")
    (models / "inswapper" / "b.onnx.part").write_bytes(b"half")  # never migrated
    (tmp_path / "data").mkdir()
    persist = tmp_path / "data" / "mirage_models"

    decision = prepare_storage(models, True, persist)

    assert decision.persisted and models.is_symlink() and Path(os.readlink(models)) == persist
    assert (persist / "inswapper" / "a.onnx").read_bytes() == b"weights"
    assert (models / "inswapper" / "a.onnx").read_bytes() == b"weights"  # through the link
    assert not (persist / "inswapper" / "b.onnx.part").exists()
    # Idempotent: a second start (or a second replica) keeps the link.
    again = prepare_storage(models, True, persist)
    assert again.persisted and models.is_symlink()


def test_persist_keeps_existing_volume_files(tmp_path: Path) -> None:
    models = tmp_path / "app" / "models"
    models.mkdir(parents=True)
    (models / "a.onnx").write_bytes(b"local")
    (models / "only_local.onnx").write_bytes(b"x")
    persist = tmp_path / "data" / "mirage_models"
    persist.mkdir(parents=True)
    (persist / "a.onnx").write_bytes(b"persisted")

    prepare_storage(models, True, persist)

    assert (persist / "a.onnx").read_bytes() == b"persisted"
    assert (persist / "only_local.onnx").read_bytes() == b"x"


def test_no_volume_or_persist_off_uses_models_dir_directly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    models = tmp_path / "models"
    decision = prepare_storage(models, True, tmp_path / "absent" / "mirage_models")
    assert not decision.persisted and models.is_dir() and not models.is_symlink()
    assert "does not exist (no persistent volume mounted)" in decision.reason
    assert decision.reason in caplog.text
    (tmp_path / "data").mkdir()
    off = prepare_storage(models, False, tmp_path / "data" / "mirage_models")
    assert not off.persisted and not models.is_symlink() and "MIRAGE_PERSIST_MODELS=0" in off.reason
    assert not (tmp_path / "data" / "mirage_models").exists()


def test_store_downloads_into_the_persistent_volume(server: ServerState, tmp_path: Path) -> None:
    url = server.add("/persist/model.onnx")
    (tmp_path / "data").mkdir()
    store = make_store(
        tmp_path, write_manifest(tmp_path, _entry("persisted", url)), persist=True, persist_dir=tmp_path / "data" / "mirage_models"
    )
    store.fetch(["persisted"])
    assert (tmp_path / "data" / "mirage_models" / "persisted" / "persisted.onnx").read_bytes() == PAYLOAD
    state = store.storage_state()
    assert state["root_is_symlink"] is True and state["target"] == str(tmp_path / "data" / "mirage_models")
    assert state["persist_mode_env"] == "1"
    snapshot = store.debug_snapshot()
    assert snapshot["models"]["persisted"]["exists"] and snapshot["sentinel"]["exists"]


# --------------------------------------------------------------------------- CLI


@pytest.fixture()
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIRAGE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MIRAGE_PERSIST_MODELS", "0")
    monkeypatch.setenv("MIRAGE_OFFLINE", "1")
    return tmp_path


def test_status_table_carries_the_non_commercial_notes(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["models", "status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "STAGE", "PRESENT", "SIZE", "VERIFIED", "LICENCE"]
    assert "NOTE: inswapper_128_fp16 — licence: non-commercial research use only" in out
    assert "NOTE: scrfd_10g — licence: non-commercial research use only" in out
    assert "NOTE: blazeface_short" not in out

    assert cli_main(["models", "status", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in payload["models"]}
    assert rows["facemesh"]["present"] and rows["facemesh"]["verified"] == VERIFIED
    assert rows["inswapper_128_fp16"]["present"] is False and rows["inswapper_128_fp16"]["commercial_use"] is False
    assert payload["storage"]["persist_mode_env"] == "0" and payload["sentinel"]["exists"] is False


def test_cli_errors_are_one_sentence_and_non_zero(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["models", "fetch", "nope"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: Unknown model 'nope'") and not any("Traceback" in line for line in err)
    assert cli_main(["models", "fetch", "inswapper_128_fp16"]) == 1  # offline
    assert "offline mode (MIRAGE_OFFLINE=1)" in capsys.readouterr().err
    assert cli_main(["models", "verify", "inswapper_128_fp16"]) == 1  # named and missing
    assert cli_main(["models", "verify"]) == 0  # embedded verified, optional ones merely missing


def test_cli_fetch_from_a_local_server(server: ServerState, cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MIRAGE_OFFLINE", "0")
    url = server.add("/cli/model.onnx")
    manifest = write_manifest(cli_env, _entry("clim", url))
    assert cli_main(["models", "--manifest", str(manifest), "fetch", "clim", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "clim: downloaded" in out and "NOTE: clim — licence: non-commercial research use only" in out
    assert cli_main(["models", "--manifest", str(manifest), "verify", "clim"]) == 0


def test_embedded_only_check_as_setup_sh_runs_it(cli_env: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "mirage.cli_models", "models", "status", "--embedded-only"],
        cwd=cli_env, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "blazeface_short" in proc.stdout and "inswapper" not in proc.stdout
