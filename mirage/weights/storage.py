"""Where model files live: the models directory, optionally persisted on a mounted volume.

Behaviour (kept from the original product, see models/README.md): with
``MIRAGE_PERSIST_MODELS=1`` (the default) and the persist directory's parent
present (a mounted ``/data`` volume), the persist directory is created, files
already in the models directory are migrated into it once, and the models
directory becomes a symlink to it, so downloads survive container restarts.
Otherwise the models directory is used as is, and the reason is logged once.

Two processes may start at once (Ray replicas): the switch to a symlink runs
under a file lock in the persist directory and re-checks the state after
acquiring it. Nothing here raises for an unusable volume: start-up falls back to
the plain models directory and says why.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

logger = logging.getLogger(__name__)

_STORAGE_LOCK = ".storage.lock"
# Leftovers of an interrupted download are never migrated: they are useless and unverified.
_SKIP_SUFFIXES = (".part", ".lock")

_logged_reasons: set[str] = set()


@dataclass(frozen=True)
class StorageDecision:
    """The outcome of :func:`prepare_storage`.

    ``root`` is the directory every model path is built from. It is the models
    directory (a real directory, or the symlink to the persist directory) except
    in the rare case where the symlink could not be created after migration; then
    it is the persist directory itself, so migrated files stay reachable.
    """

    models_dir: Path
    root: Path
    persist_env: str
    persist_dir: Path
    persisted: bool
    reason: str


def _log_once(reason: str) -> None:
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        logger.info("Model storage: %s", reason)


def _link_target(path: Path) -> Path | None:
    try:
        return Path(os.readlink(path))
    except OSError:
        return None


def _points_to(link: Path, target: Path) -> bool:
    dest = _link_target(link)
    if dest is None:
        return False
    if not dest.is_absolute():
        dest = link.parent / dest
    return os.path.abspath(dest) == os.path.abspath(target)


def _merge_move(src: Path, dst: Path) -> None:
    """Move ``src`` into ``dst`` without overwriting: an existing ``dst`` file wins."""
    if src.name.endswith(_SKIP_SUFFIXES):
        src.unlink(missing_ok=True)
        return
    if src.is_dir() and not src.is_symlink():
        dst.mkdir(exist_ok=True)
        for child in sorted(src.iterdir()):
            _merge_move(child, dst / child.name)
        src.rmdir()
        return
    if dst.exists():
        logger.info("Model storage: %s already exists in the persistent directory; dropping the local copy %s.", dst, src)
        src.unlink()
        return
    shutil.move(str(src), str(dst))


def _fallback(models_dir: Path, persist_env: str, persist_dir: Path, reason: str) -> StorageDecision:
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a dangling symlink: report it, downloads will say more
        reason += f" (but {models_dir} is unusable: {exc.strerror or exc})"
    _log_once(reason)
    return StorageDecision(models_dir, models_dir, persist_env, persist_dir, False, reason)


def prepare_storage(models_dir: Path, persist: bool, persist_dir: Path) -> StorageDecision:
    """Decide where models live and make it so (idempotent, safe across processes)."""
    models_dir = Path(os.path.abspath(models_dir))
    persist_dir = Path(os.path.abspath(persist_dir))
    persist_env = "1" if persist else "0"

    if not persist:
        if models_dir.is_symlink():
            reason = f"persistence is off (MIRAGE_PERSIST_MODELS=0); {models_dir} is a symlink to {_link_target(models_dir)}, used as is"
            _log_once(reason)
            return StorageDecision(models_dir, models_dir, persist_env, persist_dir, False, reason)
        return _fallback(models_dir, persist_env, persist_dir, f"persistence is off (MIRAGE_PERSIST_MODELS=0); using {models_dir} directly")

    if models_dir.is_symlink() and not _points_to(models_dir, persist_dir):
        reason = f"{models_dir} is already a symlink to {_link_target(models_dir)}; left as is, not persisted to {persist_dir}"
        _log_once(reason)
        return StorageDecision(models_dir, models_dir, persist_env, persist_dir, False, reason)

    if not persist_dir.parent.is_dir():
        return _fallback(
            models_dir,
            persist_env,
            persist_dir,
            f"{persist_dir.parent} does not exist (no persistent volume mounted); using {models_dir} directly, "
            "downloads will not survive a restart",
        )
    try:
        persist_dir.mkdir(exist_ok=True)
        lock = FileLock(str(persist_dir / _STORAGE_LOCK))
    except OSError as exc:
        return _fallback(
            models_dir, persist_env, persist_dir, f"cannot create {persist_dir} ({exc.strerror or exc}); using {models_dir} directly"
        )

    with lock:
        if models_dir.is_symlink():  # this process or another one already linked it
            reason = f"{models_dir} -> {persist_dir} (persistent)"
            _log_once(reason)
            return StorageDecision(models_dir, models_dir, persist_env, persist_dir, True, reason)
        if models_dir.exists() and not models_dir.is_dir():
            reason = f"{models_dir} exists and is not a directory; using {persist_dir} directly"
            _log_once(reason)
            return StorageDecision(models_dir, persist_dir, persist_env, persist_dir, True, reason)
        migrated = 0
        try:
            if models_dir.is_dir():
                for child in sorted(models_dir.iterdir()):
                    _merge_move(child, persist_dir / child.name)
                    migrated += 1
                models_dir.rmdir()
            models_dir.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(persist_dir, models_dir, target_is_directory=True)
        except OSError as exc:
            # Files may already be in the persist directory: read them from there.
            models_dir.mkdir(parents=True, exist_ok=True)
            reason = f"could not link {models_dir} to {persist_dir} ({exc.strerror or exc}); using {persist_dir} directly"
            _log_once(reason)
            return StorageDecision(models_dir, persist_dir, persist_env, persist_dir, True, reason)
    note = f", migrated {migrated} existing entr{'y' if migrated == 1 else 'ies'}" if migrated else ""
    reason = f"{models_dir} -> {persist_dir} (persistent{note})"
    _log_once(reason)
    return StorageDecision(models_dir, models_dir, persist_env, persist_dir, True, reason)


def storage_state(models_dir: Path, persist: bool, persist_dir: Path, decision: StorageDecision | None = None) -> dict[str, Any]:
    """Read-only description for ``/debug/models`` (the seed's ``storage`` block, plus why)."""
    models_dir = Path(os.path.abspath(models_dir))
    is_link = models_dir.is_symlink()
    target = _link_target(models_dir) if is_link else None
    return {
        "root_path": str(models_dir),
        "root_is_symlink": is_link,
        "target": str(target) if target is not None else None,
        "persist_mode_env": "1" if persist else "0",
        "persist_dir": str(persist_dir),
        "effective_root": str(decision.root) if decision else str(models_dir),
        "reason": decision.reason if decision else None,
    }
