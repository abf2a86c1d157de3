"""A local directory store: one file per key, keys confined to the root.

Writes go straight to the final path, without a temp file and a rename: on small
disks file metadata operations are most of a tiny job's cost. No reader sees a
partial object all the same, because a key is published (in the job's status)
only after its write completed, and result keys carry a random token; a job's
record is read only once Redis has dropped the finished job. A write cut short
by a crash leaves an unpublished file that ``expire`` removes with the rest.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ..errors import StoreError
from .base import check_key

__all__ = ["DEFAULT_DIRECTORY", "LocalStore"]

DEFAULT_DIRECTORY = "./latentq-results"


class LocalStore:
    served_by_api = True

    def __init__(self, root: str | Path = DEFAULT_DIRECTORY, public_url: str | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.public_url = public_url.rstrip("/") if public_url else None

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        # check_key admits two segments of [A-Za-z0-9_-] (and an extension): no "..", no absolute
        # path, so the key stays under the root without a realpath call per object.
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path(key)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # TRUNC: a retried job rewrites its record
        try:
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:  # the job's directory (or the root) does not exist yet
                os.makedirs(path.parent, exist_ok=True)
                fd = os.open(path, flags, 0o644)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreError(f"cannot write {key}: {_why(exc)}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"no result object {key!r}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {key}: {_why(exc)}") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {key}: {_why(exc)}") from exc

    def url(self, key: str) -> str:
        if self.public_url:
            return f"{self.public_url}/v1/results/{key}"
        return self.path(key).as_uri()

    def expire(self, older_than_seconds: float, deleted: list[str] | None = None) -> int:
        """Delete objects last written more than ``older_than_seconds`` ago; returns how many.

        Temp files that earlier versions left from interrupted writes go too (uncounted); emptied job
        directories are removed. ``deleted``: appended the key of each object deleted.
        """
        cutoff = time.time() - older_than_seconds
        if not self.root.is_dir():
            return 0
        count = 0
        for directory in self.root.iterdir():
            try:
                if not directory.is_dir() or directory.is_symlink():
                    continue
                # A directory untouched since the cutoff is not being written into: safe to remove once empty.
                idle = directory.stat().st_mtime < cutoff
                for path in directory.iterdir():
                    if path.is_file() and path.stat().st_mtime < cutoff:
                        path.unlink(missing_ok=True)
                        if not path.name.startswith(".tmp-"):
                            count += 1
                            if deleted is not None:
                                deleted.append(f"{directory.name}/{path.name}")
                if idle:
                    with contextlib.suppress(OSError):  # it still holds newer objects
                        directory.rmdir()
            except FileNotFoundError:  # removed meanwhile by a concurrent cleanup
                continue
        return count


def _why(exc: OSError) -> str:
    """The OS's reason without the file name: messages reach job statuses, and must not show server paths."""
    return exc.strerror or type(exc).__name__
