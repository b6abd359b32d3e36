"""One training run per output folder at a time.

Two runs writing the same folder would each report success while the second silently
replaced the first one's checkpoint. A run therefore holds an exclusive ``flock`` on
``<out>/.hypermixer.lock`` from before it reads anything until it returns; a second run on
the same folder is refused at once with :class:`RunFolderBusy`. The kernel drops the lock
when the process ends, however it ends (SIGKILL included), so a crashed run never leaves a
stale lock behind. The lock file itself stays (deleting it would let two runs lock two
different files of the same name).
"""

import contextlib
import functools
import inspect
import os
from pathlib import Path

try:
    import fcntl
except ImportError:   # not POSIX: no lock, as before
    fcntl = None

LOCK_NAME = ".hypermixer.lock"


class RunFolderBusy(RuntimeError):
    """Another process is training into the same output folder."""


def _check_folder(out_dir):
    """Refuse an output path that is (or lies under) an existing file, before any work."""
    for place in (out_dir, *out_dir.parents):
        if place.exists():
            if not place.is_dir():
                raise ValueError(f"the output folder {out_dir} cannot be created: {place} is "
                                 "an existing file, not a directory")
            return


@contextlib.contextmanager
def run_folder_lock(out_dir):
    """Create ``out_dir`` if needed and hold its run lock for the ``with`` block."""
    out_dir = Path(out_dir)
    _check_folder(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    lock_path = out_dir / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:   # BlockingIOError: held by another open file
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise RunFolderBusy(f"{out_dir} is in use by another training run (process "
                            f"{holder}); wait for it to finish or choose another output "
                            "folder") from None
    ok = False
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
        ok = True
    finally:
        if not ok and created:
            # a run that failed before writing anything leaves no empty folder behind; the
            # lock is still held while the file goes, so no one else can have taken it
            try:
                os.unlink(lock_path)
                out_dir.rmdir()
            except OSError:
                pass
        os.close(fd)   # releases the lock


def holds_run_lock(function):
    """Decorate a function with ``out_dir`` (and optionally ``comm``) parameters so that it
    runs under :func:`run_folder_lock`; under MPI only rank 0 writes, so only it locks."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from .distributed import rank_of
        arguments = signature.bind(*args, **kwargs).arguments
        if rank_of(arguments.get("comm")) != 0:
            return function(*args, **kwargs)
        with run_folder_lock(arguments["out_dir"]):
            return function(*args, **kwargs)
    return wrapper
