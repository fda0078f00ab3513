"""The durable local spool, in the Rust producer's format and under its lock
(`src/producer/spool.rs`), so that `flit-cache replay-spool` and `run`
replay what this client spooled, and this client replays what either wrote.

Files in the spool folder:
- `events.ndjson`: where appends go, one `{"v":2,"kind":...,"data":...}` a line;
- `replay-*.ndjson`: files taken for replay (renamed from `events.ndjson`),
  deleted once every line in them reached Redis;
- `progress-replay-*.ndjson`: how many lines of a replay file reached Redis;
- `unreadable.ndjson`: lines that could not be parsed, kept for a person;
- `.lock`: `flock`ed around every append and around the rename that starts a
  replay, by every process and language, so a line is never written into a
  file already being read. A replay file is `flock`ed by its replayer.

An append returns only after `fsync`: when it returns, the event is on disk.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import IO, Iterator

ACTIVE = "events.ndjson"
REPLAY_PREFIX = "replay-"
PROGRESS_PREFIX = "progress-"
UNREADABLE = "unreadable.ndjson"
LOCK = ".lock"
#: The line format written; the Rust side reads up to its own SPOOL_FORMAT.
SPOOL_FORMAT = 2
KINDS = ("transactions", "predictions")


class SpoolError(OSError):
    """The spool did not take the events. `payloads` are the events as
    prepared (stamped): after a timeout they may have reached Redis, so
    resend these exact texts (`send_prepared`), never the original objects
    again, or a missing time would be stamped anew and make a second row."""

    payloads: list[str] = []


class SpoolFull(SpoolError):
    def __init__(self, directory: str, used: int, limit: int) -> None:
        super().__init__(
            f"spool {directory} is full ({used} bytes, limit {limit}); events were not accepted"
        )
        self.used = used
        self.limit = limit


@dataclass(eq=False)
class ReplayFile:
    """A spool file taken for replay, `flock`ed while held."""

    path: str
    handle: IO[bytes]

    def __post_init__(self) -> None:
        _held.add(self)

    def close(self) -> None:
        self.handle.close()


# A flock belongs to the open file, which a fork() without exec shares with
# the child: a child forked inside a locked section would hold the spool's
# .lock (or a replay file) for its whole life, stalling every append. So no
# fork happens inside a section (the sections hold this lock, and so does
# the fork), and a child closes the replay files it inherited.
_sections = threading.RLock()
_held: "weakref.WeakSet[ReplayFile]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _sections
    _sections = threading.RLock()
    for file in list(_held):
        file.handle.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=lambda: _sections.acquire(),
        after_in_parent=lambda: _sections.release(),
        after_in_child=_after_fork_in_child,
    )


class Spool:
    def __init__(self, directory: str, max_bytes: int = 1 << 30) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    # -- appending ---------------------------------------------------------

    def append(self, kind: str, payloads: list[str]) -> None:
        """Appends events durably; raises SpoolError when it cannot."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        buffer = b"".join(
            json.dumps(
                {"v": SPOOL_FORMAT, "kind": kind, "data": payload},
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode("utf-8")
            + b"\n"
            for payload in payloads
        )
        try:
            with self._locked():
                used = self.bytes()
                if used + len(buffer) > self.max_bytes:
                    raise SpoolFull(self.directory, used, self.max_bytes)
                fd = os.open(
                    os.path.join(self.directory, ACTIVE),
                    os.O_RDWR | os.O_CREAT | os.O_APPEND,
                    0o600,
                )
                with os.fdopen(fd, "r+b") as file:
                    self._repair_tail(file)
                    file.write(buffer)
                    file.flush()
                    os.fsync(file.fileno())
        except SpoolError:
            raise
        except OSError as err:
            raise SpoolError(f"cannot write the spool in {self.directory}: {err}") from err

    def _repair_tail(self, file: IO[bytes]) -> None:
        """A torn append (disk full, a kill mid-write) leaves a fragment
        without its newline; the next line would be glued to it and lost
        with it. The fragment moves to unreadable.ndjson first."""
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            return
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return
        end, cut = size, 0
        while end > 0:
            start = max(0, end - 65536)
            file.seek(start)
            block = file.read(end - start)
            at = block.rfind(b"\n")
            if at >= 0:
                cut = start + at + 1
                break
            end = start
        file.seek(cut)
        fragment = file.read(size - cut)
        self._keep_unreadable([fragment])
        file.truncate(cut)

    # -- replaying ---------------------------------------------------------

    def take_for_replay(self) -> list[ReplayFile]:
        """Takes every spooled file for replay; files another replayer
        holds are skipped."""
        if not os.path.isdir(self.directory):
            return []
        with self._locked():
            active = os.path.join(self.directory, ACTIVE)
            if os.path.exists(active) and os.path.getsize(active) > 0:
                name = f"{REPLAY_PREFIX}{time.time_ns():032d}-{os.getpid()}.ndjson"
                os.rename(active, os.path.join(self.directory, name))
                self._sync_dir()
        taken = []
        for name in sorted(os.listdir(self.directory)):
            if not (name.startswith(REPLAY_PREFIX) and name.endswith(".ndjson")):
                continue
            path = os.path.join(self.directory, name)
            with _sections:
                try:
                    handle = open(path, "rb")
                except FileNotFoundError:
                    continue  # finished by another replayer meanwhile
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                if not os.path.exists(path):
                    # Finished (deleted) by another replayer before we locked it.
                    handle.close()
                    continue
                taken.append(ReplayFile(path, handle))
        return taken

    def read_events(self, file: ReplayFile) -> Iterator[tuple[int, str, str]]:
        """Yields (line number, kind, payload) from the first line after
        those an interrupted replay had sent; blank lines are not counted.
        Unreadable lines are kept in unreadable.ndjson once the file has
        been read through."""
        done = self._progress(file)
        unreadable: list[builtins.bytes] = []
        number = 0
        with open(file.path, "rb") as lines:
            for raw in lines:
                line = raw.rstrip(b"\n")
                if not line.strip():
                    continue
                number += 1
                if number <= done:
                    continue
                try:
                    parsed = json.loads(line)
                    version = parsed.get("v", 1)
                    kind, data = parsed["kind"], parsed["data"]
                except (ValueError, KeyError, TypeError, AttributeError):
                    unreadable.append(line)
                    continue
                if not isinstance(version, int) or version > SPOOL_FORMAT:
                    raise SpoolError(
                        f"{file.path} line {number} is spool format {version}, this client "
                        f"reads up to {SPOOL_FORMAT}; replay it with a newer one (the file is kept)"
                    )
                if kind not in KINDS or not isinstance(data, str):
                    unreadable.append(line)
                    continue
                yield number, kind, data
        if unreadable:
            self._keep_unreadable(unreadable)

    def record_progress(self, file: ReplayFile, line: int) -> None:
        """Notes that lines up to `line` reached Redis: written to a
        temporary name, synced and renamed, so it is whole or absent."""
        target = self._progress_path(file)
        temporary = target[: -len(".ndjson")] + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(str(line).encode())
            out.flush()
            os.fsync(out.fileno())
        os.rename(temporary, target)
        self._sync_dir()

    def finish(self, file: ReplayFile) -> None:
        """Deletes a replay file once all its events reached Redis."""
        os.remove(file.path)
        try:
            os.remove(self._progress_path(file))
        except FileNotFoundError:
            pass
        self._sync_dir()
        file.close()

    # -- facts -------------------------------------------------------------

    def bytes(self) -> int:
        """Bytes waiting in the spool (active and replay files)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        total = 0
        for name in names:
            if name == ACTIVE or name.startswith(REPLAY_PREFIX):
                try:
                    total += os.path.getsize(os.path.join(self.directory, name))
                except OSError:
                    pass
        return total

    def is_empty(self) -> bool:
        return self.bytes() == 0

    # -- helpers -----------------------------------------------------------

    def _locked(self) -> "_FileLock":
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        return _FileLock(os.path.join(self.directory, LOCK))

    def _progress(self, file: ReplayFile) -> int:
        try:
            with open(self._progress_path(file), "rb") as text:
                return int(text.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _progress_path(self, file: ReplayFile) -> str:
        return os.path.join(self.directory, PROGRESS_PREFIX + os.path.basename(file.path))

    def _keep_unreadable(self, lines: list[builtins.bytes]) -> None:
        fd = os.open(
            os.path.join(self.directory, UNREADABLE),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o600,
        )
        with os.fdopen(fd, "ab") as out:
            for line in lines:
                out.write(line + b"\n")
            out.flush()
            os.fsync(out.fileno())

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _FileLock:
    """An exclusive `flock` on the spool's `.lock`, as Rust's File::lock."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> "_FileLock":
        _sections.acquire()
        try:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
            _sections.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
        _sections.release()
