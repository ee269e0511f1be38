"""The local-filesystem object store: the embedded default.

Gives the same guarantees as S3's conditional writes to every process on one
machine:

* safe create: the body is written to a temporary file, fsync'd, then
  hard-linked to its name; `link` fails atomically if the name exists, and a
  reader never sees a partly written object;
* compare-and-swap: an exclusive `flock` on a per-object lock file
  serialises writers; under it the current content's ETag is compared and
  the new body is renamed over the old one (`rename` is atomic for readers).
  The wait for the lock is bounded (`_LOCK_WAIT_SECONDS`, then a transient
  error the retry layer retries), so a stopped holder cannot hang others;
* ETag: MD5 of the content, quoted, like S3.

Needs a local filesystem with hard links and `flock` (ext4, xfs, btrfs, apfs,
tmpfs). Network filesystems may not honour `flock` across hosts: use S3 there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from .._errors import AccessDeniedError, StoreUnavailableError
from ._etag import content_etag
from ._protocol import Blob, ObjectInfo, ObjectNotFound, PreconditionFailed, TransientError

T = TypeVar("T")
_LOCK_WAIT_SECONDS = 5.0  # longest wait for another writer's compare-and-swap lock
_WORK_DIR = ".kvstore-work"  # temporary files and locks; never listed
# Objects from this size on have their ETag computed while they are written (`_put_if_absent`).
_OVERLAP_ETAG_BYTES = 4 * 1024 * 1024


class LocalObjectStore:
    """Objects as files under `root`. Blocking calls run in worker threads."""

    def __init__(self, root: Path) -> None:
        self._root = root

    @property
    def description(self) -> str:
        return f"file://{self._root}"

    async def get(
        self,
        name: str,
        *,
        byte_range: tuple[int, int] | None = None,
        if_none_match: str | None = None,
    ) -> Blob | None:
        return await _in_thread(self._get, name, byte_range, if_none_match)

    async def put_if_absent(self, name: str, data: bytes) -> str:
        return await _in_thread(self._put_if_absent, name, data)

    async def put_if_match(self, name: str, data: bytes, etag: str) -> str:
        return await _abandonable(self._put_if_match, name, data, etag)

    async def copy_if_match(self, source: str, destination: str, etag: str) -> str:
        return await _abandonable(self._copy_if_match, source, destination, etag)

    async def start_multipart(self, name: str) -> str:
        return await _in_thread(self._start_multipart)

    async def upload_part(self, name: str, upload_id: str, part_number: int, data: bytes) -> str:
        return await _in_thread(self._upload_part, upload_id, part_number, data)

    async def complete_multipart_if_absent(self, name: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        return await _in_thread(self._complete_multipart, name, upload_id, parts)

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        await _in_thread(shutil.rmtree, self._upload_dir(upload_id), True)

    async def head(self, name: str) -> ObjectInfo:
        return await _in_thread(self._head, name)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for info in await _in_thread(lambda: list(self._walk(prefix))):
            yield info

    async def delete(self, name: str) -> None:
        await _in_thread(self._delete, name)

    async def delete_many(self, names: Sequence[str]) -> None:
        # A filesystem has no batch delete: one worker thread unlinks them all.
        await _in_thread(self._delete_many, names)

    async def close(self) -> None:
        pass

    async def prune(self, prefix: str) -> None:
        """Remove what deleting the objects under `prefix` (a directory: ends with '/')
        leaves behind: its empty directories and its objects' lock files.

        Only for a prefix nobody writes to any more (`kvstore doctor`'s scratch):
        a store's own directories stay, as a writer may be creating a file in one.
        """
        await _in_thread(self._prune, prefix)

    def _prune(self, prefix: str) -> None:
        top = self._path(prefix.rstrip("/"))
        if top.is_dir():
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
                with contextlib.suppress(OSError):  # not empty: something else lives there
                    os.rmdir(dirpath)
        parent = top.parent
        while parent != self._root and parent.is_relative_to(self._root):
            with contextlib.suppress(OSError):
                os.rmdir(parent)  # e.g. <root>/doctor once no run is left in it
            parent = parent.parent
        work = self._root / _WORK_DIR
        locks = work / "locks"
        mark = prefix.replace("/", "%")
        if locks.is_dir():
            for lock in locks.iterdir():
                if lock.name.startswith(mark):
                    with contextlib.suppress(OSError):
                        lock.unlink()
        # In a directory holding no store, an emptied work directory goes too, so the
        # directory is left as it was found (`kvstore init` refuses foreign entries). A
        # store's stays: a writer may be about to put a file in it.
        if (self._root / "manifest").exists():
            return
        for empty in (locks, work):
            with contextlib.suppress(OSError):
                os.rmdir(empty)

    # -- blocking implementations ------------------------------------------------

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") or p.startswith(_WORK_DIR) for p in parts):
            raise ValueError(f"invalid object name {name!r}")  # names are generated; a bug
        return self._root.joinpath(*parts)

    def _get(self, name: str, byte_range: tuple[int, int] | None, if_none_match: str | None) -> Blob | None:
        try:
            with open(self._path(name), "rb") as f:
                if byte_range is not None:
                    f.seek(byte_range[0])
                    return Blob(f.read(byte_range[1] - byte_range[0]), None)
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(name) from None
        etag = content_etag(data)
        if if_none_match is not None and if_none_match == etag:
            return None
        return Blob(data, etag)

    def _put_if_absent(self, name: str, data: bytes) -> str:
        if len(data) < _OVERLAP_ETAG_BYTES:
            self._link_into_place(self._write_temp(data), name)
            return content_etag(data)
        # A large object's MD5 (its ETag) costs about as much as writing it: both release
        # the GIL, so they overlap (a 64 MiB value: ~0.15 s each on one core). A thread of
        # its own, not a pool: a pool's idle threads would not exist in a forked child.
        etag: list[str] = []
        thread = threading.Thread(target=lambda: etag.append(content_etag(data)), name="kvstore-etag")
        thread.start()
        try:
            self._link_into_place(self._write_temp(data), name)
        finally:
            thread.join()
        return etag[0]

    def _link_into_place(self, tmp: Path, name: str) -> None:
        """Give the complete, fsync'd file `tmp` the name `name` unless it exists (atomic)."""
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(tmp, path)
        except FileExistsError:
            raise PreconditionFailed(f"{name} exists") from None
        finally:
            tmp.unlink()
        _fsync_dir(path.parent)

    def _put_if_match(self, name: str, data: bytes, etag: str, abandoned: threading.Event) -> str:
        path = self._path(name)
        with self._locked(name, abandoned):
            try:
                current = path.read_bytes()
            except FileNotFoundError:
                raise ObjectNotFound(name) from None
            if content_etag(current) != etag:
                raise PreconditionFailed(f"{name} changed")
            tmp = self._write_temp(data)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        return content_etag(data)

    def _copy_if_match(self, source: str, destination: str, etag: str, abandoned: threading.Event) -> str:
        # Under the source's CAS lock, so the content compared is the content copied.
        with self._locked(source, abandoned):
            blob = self._get(source, None, None)
            assert blob is not None
            if blob.etag != etag:
                raise PreconditionFailed(f"{source} changed")
            return self._put_if_absent(destination, blob.data)

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise ValueError(f"invalid upload id {upload_id!r}")
        return self._root / _WORK_DIR / f"upload-{upload_id}"

    def _start_multipart(self) -> str:
        upload_id = uuid.uuid4().hex
        self._upload_dir(upload_id).mkdir(parents=True)
        return upload_id

    def _upload_part(self, upload_id: str, part_number: int, data: bytes) -> str:
        part = self._upload_dir(upload_id) / f"{part_number:05d}"
        with open(part, "wb") as f:
            f.write(data)
        return content_etag(data)

    def _complete_multipart(self, name: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        upload = self._upload_dir(upload_id)
        path = self._path(name)
        if not upload.is_dir():  # completed (or aborted) before
            if path.exists():
                raise PreconditionFailed(f"{name} exists")
            raise ObjectNotFound(f"no upload {upload_id} for {name}")
        tmp = self._root / _WORK_DIR / f"tmp-{uuid.uuid4().hex}"
        digest = hashlib.md5(usedforsecurity=False)
        with open(tmp, "wb") as out:
            for number, _ in parts:
                data = (upload / f"{number:05d}").read_bytes()
                digest.update(data)
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        self._link_into_place(tmp, name)
        shutil.rmtree(upload, ignore_errors=True)
        return '"' + digest.hexdigest() + '"'

    def _head(self, name: str) -> ObjectInfo:
        path = self._path(name)
        try:
            data = path.read_bytes()
            mtime = path.stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(name) from None
        return ObjectInfo(name, len(data), content_etag(data), mtime)

    def _walk(self, prefix: str) -> Iterator[ObjectInfo]:
        if not self._root.is_dir():
            return
        names: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(self._root):
            dirnames[:] = [d for d in dirnames if d != _WORK_DIR]
            rel = Path(dirpath).relative_to(self._root)
            for filename in filenames:
                name = "/".join((*rel.parts, filename))
                if name.startswith(prefix):
                    names.append((name, Path(dirpath, filename)))
        for name, path in sorted(names):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # deleted while listing
            # Listing reports sizes and times; the ETag of a listed file is read lazily
            # by `head` when needed, as hashing every file here would read the store.
            yield ObjectInfo(name, st.st_size, "", st.st_mtime)

    def _delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass

    def _delete_many(self, names: Sequence[str]) -> None:
        for name in names:
            self._delete(name)

    def _write_temp(self, data: bytes) -> Path:
        work = self._root / _WORK_DIR
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / f"tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    @contextmanager
    def _locked(self, name: str, abandoned: threading.Event) -> Iterator[None]:
        locks = self._root / _WORK_DIR / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / name.replace("/", "%"), "a+b") as f:
            _lock_within(f.fileno(), _LOCK_WAIT_SECONDS, name, abandoned)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _lock_within(fd: int, seconds: float, name: str, abandoned: threading.Event) -> None:
    """Take an exclusive flock on `fd`, waiting at most `seconds`, and only while the
    caller still waits for the result.

    A holder is another writer in its short read-compare-rename, so waits are
    brief; one that stays, such as a process stopped while holding the lock,
    must not hang every other writer: the wait ends in TransientError, which
    the retry layer retries within its deadline. A caller that gave up
    (`abandoned`) must not have its write applied later behind its back.
    """
    deadline = time.monotonic() + seconds
    pause = 0.001
    while True:
        if abandoned.is_set():
            raise TransientError(f"gave up waiting for the lock of {name!r}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if abandoned.is_set():  # given up while we took it: write nothing
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise TransientError(f"gave up waiting for the lock of {name!r}")
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TransientError(f"the lock of {name!r} stayed taken for {seconds:g} s") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _abandonable(fn: Callable[..., T], *args: Any) -> T:
    """`_in_thread` for a write under a lock: `fn` gets a last argument, an event set
    when the caller stops waiting (its deadline passed), so that the thread does
    not apply the write afterwards."""
    abandoned = threading.Event()
    try:
        return await _in_thread(fn, *args, abandoned)
    except asyncio.CancelledError:
        abandoned.set()
        raise


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a worker thread, translating OS errors we cannot retry."""
    try:
        return await asyncio.to_thread(fn, *args)
    except PermissionError as exc:
        raise AccessDeniedError(f"permission denied: {exc.filename}: check the directory's owner and mode") from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
            raise StoreUnavailableError(
                f"local store I/O failed: {exc}; free space or fix the disk, then retry"
            ) from exc
        raise
