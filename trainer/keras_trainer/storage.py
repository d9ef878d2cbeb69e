"""Model and data locations: local paths, pvc:// claims and remote URIs (through fsspec).

`pvc://CLAIM/PATH` names a file on a PersistentVolumeClaim; the operator mounts each claim
at PVC_ROOT/CLAIM, so inside the pod it is an ordinary path. Remote URIs (s3://, gs://,
https://, memory://) are copied to a local staging folder first, because Keras and NumPy
read local files.

Errors come in two kinds. StorageError is deterministic (not found, no driver for the scheme, access
denied): the spec or the setup is wrong and running again cannot help. TransientStorageError is what a
remote store does now and then (connection reset, timeout, 5xx, a generic I/O error): each remote
operation is tried RETRIES times with doubling pauses before the trainer gives up with it, and the Job
then retries the pod (exit code 1, not EXIT_INVALID_SPEC).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import structlog

from keras_trainer.errors import TransientError, first_line

PVC_ROOT_ENV = "KERAS_OPERATOR_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
RETRIES_ENV = "KERAS_TRAINER_STORAGE_RETRIES"
BACKOFF_ENV = "KERAS_TRAINER_STORAGE_BACKOFF"
DEFAULT_RETRIES = 4  # attempts in all
DEFAULT_BACKOFF = 1.0  # seconds before the second attempt; doubled before each further one

T = TypeVar("T")
log = structlog.get_logger("keras_trainer.storage")


class StorageError(Exception):
    """Deterministic: the location is wrong (not found, unsupported, not allowed)."""


class TransientStorageError(TransientError):
    """The store failed in a way that may pass (network, timeout, 5xx); already retried here."""


# OSErrors that say something about the location itself: the same request fails the same way again.
_DETERMINISTIC_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
_DETERMINISTIC_ERRNOS = (errno.EINVAL, errno.ENAMETOOLONG, errno.ENOSYS)


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)  # aiohttp.ClientResponseError (http://, gcsfs)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)  # botocore.exceptions.ClientError
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same storage request again may succeed."""
    if isinstance(exc, _DETERMINISTIC_OS_ERRORS):
        return False
    status = _http_status(exc)
    if status is not None:
        return status >= 500 or status in (408, 429)
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, socket errors, s3fs's EIO for a 5xx
        return exc.errno not in _DETERMINISTIC_ERRNOS
    # Client libraries' network errors that are not OSErrors (aiohttp, botocore), by class name so that
    # none of them has to be installed.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names & {"ClientConnectionError", "ServerTimeoutError", "HTTPClientError", "ConnectionError", "TimeoutError"}
    )


def retrying(
    what: str, uri: str, operation: Callable[[], T], transient: Callable[[BaseException], bool] = is_transient
) -> T:
    """operation(), tried again after transient failures; TransientStorageError once attempts run out."""
    attempts = max(1, int(os.environ.get(RETRIES_ENV) or DEFAULT_RETRIES))
    pause = float(os.environ.get(BACKOFF_ENV) or DEFAULT_BACKOFF)
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except (StorageError, TransientError):
            raise
        except Exception as exc:
            if not transient(exc):
                raise
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            if attempt == attempts:
                raise TransientStorageError(
                    f"cannot {what} {uri} after {attempts} attempts ({reason}); the store may be down or "
                    "unreachable, so the Job retries"
                ) from exc
            log.warning("storage_retry", action=what, uri=uri, attempt=attempt, error=reason, retry_in=pause)
            time.sleep(pause)
            pause *= 2
    raise AssertionError("unreachable")


def pvc_root() -> Path:
    return Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))


def is_remote(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme not in ("", "file", "pvc") and len(scheme) > 1  # one letter: a Windows drive


def local_path(uri: str) -> Path:
    """The local path for a local, file:// or pvc:// URI."""
    parsed = urlparse(uri)
    if parsed.scheme == "pvc":
        if not parsed.netloc:
            raise StorageError(f"{uri!r} has no claim name; expected pvc://CLAIM/PATH")
        return pvc_root() / parsed.netloc / parsed.path.lstrip("/")
    if parsed.scheme == "file":
        return Path(parsed.path)
    if is_remote(uri):
        raise StorageError(f"{uri!r} is not a local path")
    return Path(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def _filesystem(uri: str):  # noqa: ANN202 - fsspec has no type stubs
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec is a trainer dependency
        raise StorageError("reading remote URIs needs fsspec (pip install 'keras-operator[trainer]')") from exc
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        scheme = urlparse(uri).scheme
        raise StorageError(
            f"no filesystem driver for {scheme}:// URIs ({exc}); install e.g. keras-operator[s3] or [gcs]"
        ) from exc
    return fs, path


def fetch(uri: str, staging: Path | None = None) -> Path:
    """A local path holding the file or folder at `uri`, downloading remote ones."""
    if not is_remote(uri):
        path = local_path(uri)
        if not path.exists():
            raise StorageError(f"not found: {path}" + (f" (from {uri})" if str(path) != uri else ""))
        return path
    fs, path = _filesystem(uri)
    staging = staging or Path(tempfile.mkdtemp(prefix="keras-fetch-"))
    target = staging / Path(path.rstrip("/")).name

    def download() -> Path:
        if not _exists(fs, path):
            raise StorageError(f"not found: {uri}")
        fs.get(path, str(target), recursive=fs.isdir(path))
        return target

    return retrying("read", uri, _deterministic(uri, download))


def _exists(fs, path: str) -> bool:  # noqa: ANN001 - fsspec has no type stubs
    # fsspec's HTTP filesystem answers False for a 503 or a dropped connection unless asked to be strict;
    # a store that is down must not read as "not found".
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if "http" in protocols or "https" in protocols:
        return bool(fs.exists(path, strict=True))
    return bool(fs.exists(path))


def _deterministic(uri: str, operation: Callable[[], T]) -> Callable[[], T]:
    """operation, with the store's deterministic refusals turned into StorageError (one clear line)."""

    def run() -> T:
        try:
            return operation()
        except FileNotFoundError as exc:
            raise StorageError(f"not found: {uri}") from exc
        except PermissionError as exc:
            raise StorageError(f"access denied to {uri}: {first_line(exc)}") from exc

    return run


def exists(uri: str) -> bool:
    if not is_remote(uri):
        return local_path(uri).exists()
    fs, path = _filesystem(uri)
    return retrying("look up", uri, lambda: _exists(fs, path))


def read_text(uri: str) -> str | None:
    """The text of a small file, or None when there is none."""
    if not is_remote(uri):
        path = local_path(uri)
        return path.read_text() if path.is_file() else None
    fs, path = _filesystem(uri)

    def read() -> str | None:
        return fs.cat_file(path).decode() if _exists(fs, path) else None

    return retrying("read", uri, read)


def write_text(uri: str, text: str) -> None:
    """Write a small file all at once: readers see the old content or the new, never a part of it
    (locally a temporary file renamed over the target; an object store's PUT is atomic)."""
    if not is_remote(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        partial.write_text(text)
        os.replace(partial, target)
        return
    fs, path = _filesystem(uri)
    retrying("write", uri, lambda: fs.pipe_file(path, text.encode()))


def publish(local: Path, uri: str) -> None:
    """Copy a local file or folder to `uri` (a no-op when `uri` is that same local place)."""
    if not is_remote(uri):
        target = local_path(uri)
        if target.resolve() == local.resolve():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if local.is_dir():
            shutil.copytree(local, target, dirs_exist_ok=True)
        else:
            shutil.copy2(local, target)
        return
    fs, path = _filesystem(uri)
    # Each file is its own retried PUT: a dropped connection costs one file again, not the whole folder.
    if not local.is_dir():
        retrying("write", uri, lambda: fs.put_file(str(local), path))
        return
    # One file at a time, oldest first (fsspec's put uploads a folder concurrently): a process killed
    # mid-upload leaves the remote folder as its writer once had it. Keras writes a checkpoint's
    # weights before the metadata naming its epoch; uploaded together, the small metadata lands
    # first, and a resumed training would skip an epoch it never trained.
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.stat().st_mtime_ns, str(p)))
    for parent in sorted({f.parent for f in files} | {local}):
        folder = join(path, *parent.relative_to(local).parts)
        retrying("write", join(uri, *parent.relative_to(local).parts), lambda f=folder: fs.makedirs(f, exist_ok=True))
    for file in files:
        key = join(path, *file.relative_to(local).parts)
        retrying("write", join(uri, *file.relative_to(local).parts), lambda f=file, k=key: fs.put_file(str(f), k))


def remove(uri: str) -> None:
    """Delete a remote file or folder if it exists (local ones are managed by their writers)."""
    if not is_remote(uri):
        return
    fs, path = _filesystem(uri)

    def delete() -> None:
        if fs.exists(path):
            fs.rm(path, recursive=True)

    retrying("delete", uri, delete)


@dataclass(frozen=True)
class Entry:
    name: str  # relative to the listed folder, "/"-separated
    folder: bool
    size: int  # bytes; 0 for folders


def listing(uri: str, recursive: bool = False) -> list[Entry]:
    """What a folder holds (its files and folders; with `recursive`, its files at every depth), sorted by
    name. StorageError when there is no such folder."""
    if not is_remote(uri):
        root = local_path(uri)
        if not root.is_dir():
            what = "not a folder" if root.exists() else "not found"
            raise StorageError(f"{what}: {root}" + (f" (from {uri})" if str(root) != uri else ""))
        paths = (p for p in root.rglob("*") if p.is_file()) if recursive else root.iterdir()
        # stat() of a file removed between the listing and now: a folder being rewritten, skip it
        entries = []
        for p in paths:
            try:
                entries.append(Entry(p.relative_to(root).as_posix(), p.is_dir(), 0 if p.is_dir() else p.stat().st_size))
            except FileNotFoundError:
                continue
        return sorted(entries, key=lambda e: e.name)
    fs, path = _filesystem(uri)
    base = path.rstrip("/")

    def read() -> list[Entry]:
        # s3fs keeps listings for the life of the process: a folder watched for new versions would never
        # show them.
        fs.invalidate_cache(base)
        if not fs.isdir(base):
            raise StorageError(f"{'not a folder' if _exists(fs, base) else 'not found'}: {uri}")
        infos = fs.find(base, detail=True) if recursive else {i["name"]: i for i in fs.ls(base, detail=True)}
        entries = []
        for name, info in infos.items():
            relative = name.rstrip("/")[len(base) :].lstrip("/")
            if relative:  # some stores list the folder itself
                folder = info.get("type") == "directory"
                entries.append(Entry(relative, folder, 0 if folder else int(info.get("size") or 0)))
        return sorted(entries, key=lambda e: e.name)

    return retrying("list", uri, _deterministic(uri, read))
