"""Model and data locations: local paths, pvc:// claims and remote URIs (through fsspec).

`pvc://CLAIM/PATH` names a file on a PersistentVolumeClaim; the operator mounts each claim
at PVC_ROOT/CLAIM, so inside the pod it is an ordinary path. Remote URIs (s3://, gs://,
https://, memory://) are copied to a local staging folder first, because Keras and NumPy
read local files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

PVC_ROOT_ENV = "KERAS_OPERATOR_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"


class StorageError(Exception):
    pass


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
    if not fs.exists(path):
        raise StorageError(f"not found: {uri}")
    staging = staging or Path(tempfile.mkdtemp(prefix="keras-fetch-"))
    target = staging / Path(path.rstrip("/")).name
    fs.get(path, str(target), recursive=fs.isdir(path))
    return target


def exists(uri: str) -> bool:
    if not is_remote(uri):
        return local_path(uri).exists()
    fs, path = _filesystem(uri)
    return bool(fs.exists(path))


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
    if not local.is_dir():
        fs.put(str(local), path)
        return
    # One file at a time, oldest first (fsspec's put uploads a folder concurrently): a process killed
    # mid-upload leaves the remote folder as its writer once had it. Keras writes a checkpoint's
    # weights before the metadata naming its epoch; uploaded together, the small metadata lands
    # first, and a resumed training would skip an epoch it never trained.
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.stat().st_mtime_ns, str(p)))
    for parent in sorted({f.parent for f in files} | {local}):
        fs.makedirs(join(path, *parent.relative_to(local).parts), exist_ok=True)
    for file in files:
        fs.put_file(str(file), join(path, *file.relative_to(local).parts))


def remove(uri: str) -> None:
    """Delete a remote file or folder if it exists (local ones are managed by their writers)."""
    if not is_remote(uri):
        return
    fs, path = _filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
