"""Run directories that clayflow can prove it wrote: the marker, the lock, creation and replacement.

A run directory holds ``clayflow-run.json`` (the *marker*: a format version and a run id),
written when clayflow creates the directory and never by anything else, so ``--force`` clears
only directories that carry it, never a folder that merely holds a ``config.json``.

While a process trains in a run it holds an exclusive ``fcntl.flock`` on ``RUN/.clayflow.lock``
(which names its PID): a second ``train`` or ``--resume`` of the same run is refused with one
line naming the holder. The kernel releases the lock when the process dies, so a killed run
is never left locked.

New runs are created with ``mkdir`` (never ``exist_ok``), so two trainings started at once
cannot share a directory; a default name that is taken gets a ``-2``, ``-3``, ... suffix. A
run replaced with ``--force`` is built beside the old one (``.NAME.clayflow-<id>``) and swapped
in only when it has written its first checkpoint after step 0: a command that fails or is
interrupted before that changes nothing.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from clayflow.errors import ClayflowError, UsageError
from clayflow.files import atomic_write, read_regular_text

MARKER_NAME = "clayflow-run.json"
LOCK_NAME = ".clayflow.lock"
MARKER_FORMAT = 1
_MAX_SUFFIX = 1000


def default_run_dir(model: str, data: str) -> Path:
    """``runs/<model>-<data>-<timestamp>``, with the data path reduced to its file stem (a
    name taken by a run started in the same second gets a suffix when it is created)."""
    stem = Path(data).stem if "/" in data or "." in data else data
    return Path("runs") / f"{model}-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` carries the marker that only clayflow writes."""
    marker = path / MARKER_NAME
    try:
        return json.loads(read_regular_text(marker)).get("format") is not None
    except (OSError, ValueError, AttributeError):
        return False


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``RUN/.clayflow.lock``, released by ``release``
    or by the kernel when the process ends. The holder writes its PID into the file (for the
    message a refused second process prints) and empties it on release, so the content of an
    idle run's files is the same before and after a refused command."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise ClayflowError(f"cannot lock run {run_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ClayflowError(
                    f"run {run_dir} is in use by another clayflow process (PID {holder}); "
                    "wait for it to finish or stop it first"
                ) from None
            raise ClayflowError(f"cannot lock run {run_dir}: {exc.strerror or exc}") from None
        try:  # the PID is for the message of a refused second process: best effort on a full disk
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # a full disk cannot stop the unlock
        # Unlocked explicitly: a forked child (a DataLoader worker) may still hold the descriptor.
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def check_new_run_location(path: Path) -> None:
    """Refuse ``path`` for a new run when it is ``/``, the home directory, the working directory
    or one of its parents (clearing or filling them would hit the user's own files), or when it
    lies inside another run (replacing that run would delete it)."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if resolved == Path(resolved.anchor) or resolved == home or resolved == cwd or resolved in cwd.parents:
        what = {Path(resolved.anchor): "the root directory", home: "your home directory"}.get(
            resolved, "the working directory or one of its parents"
        )
        raise UsageError(f"refusing to use {path} ({what}) as a run directory; give --out a new folder")
    inside = next((parent for parent in resolved.parents if is_run_dir(parent)), None)
    if inside is not None:
        raise UsageError(f"{path} is inside the run {inside}; give --out a folder outside it")


class NewRun:
    """The directory of a new run: claimed (created and locked) at once.

    Without ``force`` the run is created at ``path`` itself (``unique=True``: a taken name gets
    a numbered suffix, for default names). With ``force`` an existing run at ``path`` (one with
    the marker) is kept, and locked, until the new run has written a checkpoint after step 0:
    the new run lives in a hidden sibling (``pending``) until ``checkpoint_written`` swaps the
    two directories in one atomic step.
    """

    def __init__(self, path: Path, *, force: bool = False, unique: bool = False):
        check_new_run_location(path)
        self.final = path
        self.old_lock: RunLock | None = None
        self.lock: RunLock | None = None
        self.created = True  # whether this command made the directory (else: an empty one was given)
        self.has_checkpoint = False
        self.run_id = uuid.uuid4().hex
        if path.exists() and not path.is_dir():
            raise UsageError(f"output path {path} exists and is not a directory; choose another --out")
        if force and path.is_dir() and _has_entries(path):
            if not is_run_dir(path):
                what = "its marker is unreadable" if (path / MARKER_NAME).exists() else f"no {MARKER_NAME}"
                raise UsageError(
                    f"output directory {path} is not a clayflow run ({what}); refusing to clear it even with --force"
                )
            if os.path.ismount(path):
                raise UsageError(f"{path} is a mount point, which cannot be replaced; give --out a folder in it")
            self.old_lock = RunLock(path)  # nobody may be training in the run we replace
            _remove_abandoned_replacements(path)
            self.path = path.parent / f".{path.name}.clayflow-{self.run_id[:8]}"
            try:
                _make_dir(self.path)
            except BaseException:
                self.old_lock.release()
                raise
        else:
            self.path, self.created = _claim(path, unique)
            self.final = self.path  # with a suffix, when the default name was taken
        try:
            self.lock = RunLock(self.path)
        except BaseException:
            self._release_locks()  # the folder is another process's now: leave it alone
            raise
        if set(os.listdir(self.path)) != {LOCK_NAME}:  # an empty folder someone else filled first
            self._release_locks()
            raise UsageError(f"output directory {self.path} was taken by another process; choose another --out")
        try:
            self._write_marker()
        except BaseException:
            self.abandon()
            raise

    @property
    def pending(self) -> bool:
        """Whether the run still lives beside the run it will replace."""
        return self.path != self.final

    def _write_marker(self) -> None:
        from clayflow import __version__

        marker = {
            "format": MARKER_FORMAT,
            "run_id": self.run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "clayflow": __version__,
        }
        try:
            atomic_write(self.path / MARKER_NAME, lambda f: f.write((json.dumps(marker) + "\n").encode()))
        except OSError as exc:
            raise ClayflowError(f"cannot write to output directory {self.path}: {exc.strerror or exc}") from None

    def checkpoint_written(self, step: int) -> None:
        """Note that a checkpoint of ``step`` was written. The first one after step 0 puts a
        pending run in place of the run it replaces: the two directories are exchanged
        atomically, then the old one (now in the hidden sibling) is deleted."""
        self.has_checkpoint = True
        if not self.pending or step == 0:
            return
        exchange_directories(self.path, self.final)
        self.path = self.final
        self.old_lock.release()
        self.old_lock = None
        shutil.rmtree(self.final.parent / f".{self.final.name}.clayflow-{self.run_id[:8]}", ignore_errors=True)

    @property
    def removed_on_failure(self) -> bool:
        """Whether ``abandon`` removes the run: a pending replacement, or a run without a checkpoint."""
        return self.pending or not self.has_checkpoint

    def abandon(self) -> None:
        """Undo a run that stopped before it could stand on its own: a pending replacement is
        removed (the old run stays as it was), and so is a directory this command created when
        no checkpoint made it into it (an empty folder the user gave is emptied again)."""
        if self.lock is not None and self.removed_on_failure:
            if self.pending or self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                for name in os.listdir(self.path):
                    target = self.path / name
                    shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        self._release_locks()

    def release(self) -> None:
        self._release_locks()

    def _release_locks(self) -> None:
        for lock in (self.lock, self.old_lock):
            if lock is not None:
                lock.release()


def _remove_abandoned_replacements(path: Path) -> None:
    """Delete the hidden siblings ``.NAME.clayflow-*`` that earlier ``--force`` replacements of
    ``path`` left when they were killed: clayflow's (they carry the marker) and unlocked."""
    for sibling in path.parent.glob(f".{path.name}.clayflow-*"):
        if not (sibling.is_dir() and not sibling.is_symlink() and is_run_dir(sibling)):
            continue
        try:
            lock = RunLock(sibling)
        except ClayflowError:  # another replacement is running
            continue
        shutil.rmtree(sibling, ignore_errors=True)
        lock.release()


def exchange_directories(a: Path, b: Path) -> None:
    """Swap the directories ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``),
    so a crash leaves either both as they were or both swapped. Where the system or the file
    system cannot, two renames, the first undone if the second fails."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(b))
    aside = b.with_name(f".{b.name}.clayflow-aside-{uuid.uuid4().hex[:8]}")
    os.rename(b, aside)
    try:
        os.rename(a, b)
    except BaseException:
        os.rename(aside, b)
        raise
    os.rename(aside, a)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _renameat2():
    """glibc's ``renameat2``, or None where there is none (other systems, other C libraries)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


class ExistingRun:
    """A run being resumed: locked for as long as it trains. Only a directory that clayflow
    provably wrote (the marker, or a checkpoint) is locked and written to."""

    pending = False
    removed_on_failure = False

    def __init__(self, path: Path):
        from clayflow.train.checkpoint import CHECKPOINT_NAME

        if not path.is_dir():
            raise ClayflowError(f"{path} is not a run directory; give --resume the folder of a run")
        if not (is_run_dir(path) or (path / CHECKPOINT_NAME).is_file()):
            raise ClayflowError(
                f"{path} is not a clayflow run directory (no {MARKER_NAME}, no {CHECKPOINT_NAME}); nothing to resume"
            )
        self.path = self.final = path
        self.lock = RunLock(path)

    def remove_stale_temporaries(self) -> None:
        """Delete the temporary files of writes that a kill cut short (``atomic_write``'s
        ``.NAME.XXXX.tmp``), in the run and its checkpoint folder."""
        from clayflow.train.checkpoint import CHECKPOINT_NAME

        for folder in (self.path, self.path / CHECKPOINT_NAME.parent):
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    def checkpoint_written(self, step: int) -> None:
        """Nothing to do: a resumed run is in place from the start."""

    def abandon(self) -> None:
        """Nothing to undo: a resumed run keeps its last checkpoint."""

    def release(self) -> None:
        self.lock.release()


class ReadOnlyRun:
    """A run as the processes other than rank 0 of a distributed run see it: they read its
    checkpoint to resume, and never write, lock or remove anything."""

    pending = False
    removed_on_failure = False

    def __init__(self, path: Path):
        self.path = self.final = path

    def remove_stale_temporaries(self) -> None:
        """Rank 0's business."""

    def checkpoint_written(self, step: int) -> None:
        """Rank 0 writes the checkpoints."""

    def abandon(self) -> None:
        """Rank 0 undoes what it wrote."""

    def release(self) -> None:
        """Nothing is locked here."""


def _has_entries(path: Path) -> bool:
    return any(path.iterdir())


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        raise
    except OSError as exc:
        raise ClayflowError(f"cannot write to output directory {path}: {exc.strerror or exc}") from None


def _claim(path: Path, unique: bool) -> tuple[Path, bool]:
    """Create ``path``, or use it when it is an existing empty directory (a non-empty one is
    refused). With ``unique`` (default names) an existing ``path`` is never used: the first
    free ``path-2``, ``path-3``, ... is created instead. Returns the directory and whether
    this call created it."""
    for n in range(1, _MAX_SUFFIX):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        try:
            _make_dir(candidate)
            return candidate, True
        except FileExistsError:
            if unique:  # another run may be creating it right now
                continue
            if not candidate.is_dir():
                raise UsageError(f"output path {candidate} exists and is not a directory; choose another --out") from None
            if not _has_entries(candidate):
                return candidate, False
            raise UsageError(
                f"output directory {candidate} is not empty; choose another --out, --resume it, or pass --force"
            ) from None
    raise ClayflowError(f"no free run directory name beside {path}; clean up {path.parent}")
