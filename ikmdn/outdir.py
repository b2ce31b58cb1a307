"""Output files and folders: created, never silently overwritten, never left half written.

Torch-free, so that evaluating an .onnx model does not need the training extra.

Every file a command writes goes through `write_atomically`: a hidden temporary file beside the
destination (`.NAME.<random>.tmp`), moved onto the destination only once it is complete. Any
exception removes the temporary, and so do SIGINT and SIGTERM (they are turned into exceptions
for the duration of the write); only SIGKILL or a power cut can leave it behind, and then it is
that one hidden file. The finished file gets the permissions the umask allows (0o666 & ~umask),
like any file created with open().
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from ikmdn.errors import IKMDNError


def prepare_out_dir(out_dir: str | Path, force: bool) -> Path:
    """Create out_dir; refuse (unless force) when it already holds files."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IKMDNError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise IKMDNError(f"--out {out} already holds files; choose another folder or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _missing_folders(path: Path) -> list[Path]:
    """path and those of its ancestors that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing


@contextmanager
def removed_if_failed(out_dir: str | Path) -> Iterator[Path]:
    """Within the block, the folders it creates for out_dir (out_dir and any missing parents) are
    removed again if the block fails (any exception, SIGINT/SIGTERM included) while they are still
    empty: a failed job leaves no empty folders behind. A folder that existed before the block is
    never removed, nor one that holds anything."""
    out = Path(out_dir)
    created = _missing_folders(out)
    try:
        yield out
    except BaseException:
        for folder in created:  # deepest first; rmdir refuses a folder that holds anything
            try:
                folder.rmdir()
            except OSError:
                break
        raise


LOCK_NAME = ".lock"  # a run folder's lock file: pid and command of the job writing the folder


class RunLock:
    """An exclusive, non-blocking lock on a run folder: fcntl.flock on FOLDER/.lock.

    The kernel releases a flock when its holder exits, crashes or is killed, so a stale lock
    never blocks a later job. The holder writes its pid and command into the file (the error of a
    second job names it) and removes the file when it releases the lock normally; a killed
    holder leaves the file, which the next job simply locks again. Where fcntl does not exist
    (Windows) no lock is taken.
    """

    def __init__(self, folder: str | Path, job: str):
        self.folder, self.job = Path(folder), job
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise IKMDNError naming the job that holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise IKMDNError(f"--out {self.folder} is in use by another ikmdn job ({holder}); "
                                 "wait for it to end or stop it, or choose another folder") from None
            except BaseException:
                os.close(fd)
                raise
            # The previous holder removes the file as it lets go: if it did so after we opened
            # it, we hold a lock on a file nobody else will open; start again on the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, {self.job}\n".encode())

    def release(self) -> None:
        """Remove the lock file and let the lock go (in that order: see acquire)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    """The holder's line from a lock file (pid and command), printable and short."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").splitlines()
    except OSError:
        text = []
    line = "".join(c for c in (text[0] if text else "") if c.isprintable())[:120].strip()
    return line or "pid unknown: it is just starting"


def _temporaries_of(folder: Path, names: Collection[str]) -> list[Path]:
    """Temporaries that write_atomically left for names in folder (only SIGKILL leaves any)."""
    return [p for name in names for p in folder.glob(f".{name}.*.tmp") if p.is_file()]


@contextmanager
def run_folder(out_dir: str | Path, own: Collection[str], job: str, force: bool = False,
               resume: bool = False, markers: Collection[str] = ()) -> Iterator[Path]:
    """A run folder held by one job for the duration of the block.

    New run (resume=False): out_dir is created if missing (and removed again if the block fails
    while it is still empty), locked (RunLock; a second job fails at once naming this one), and
    must then be empty unless force. With force, the files that belong to an old run (`own`, the
    run's own file names, and temporaries a killed write of them left) are deleted before the new
    run starts, so that nothing of the old run can be mistaken for the new one; any other file in
    the folder (notes, reports) is the user's and is left alone. A folder that holds files but
    none of `markers` (the files only a run writes) is no old run: force is refused there, so
    that a user's own config.json or history.csv is never deleted.

    resume=True: out_dir must exist; it is locked and only stale temporaries of `own` are removed.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IKMDNError(f"--out {out} exists and is not a folder")
    if resume and not out.is_dir():
        raise IKMDNError(f"cannot resume: {out} does not exist")
    with removed_if_failed(out):
        lock = RunLock(out, job)
        for attempt in range(3):
            out.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire()
                break
            except FileNotFoundError:  # a job that failed just now removed the empty folder
                if attempt == 2:
                    raise
        try:
            stale = _temporaries_of(out, own)
            if not resume:
                held = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
                if held and not force:
                    raise IKMDNError(f"--out {out} already holds files; choose another folder or "
                                     "pass --force")
                for name in own:
                    path = out / name
                    if path.is_dir() and not path.is_symlink():
                        raise IKMDNError(f"--out {out}: {name} is a folder, not a file of a run; "
                                         "remove it or choose another folder")
                if held and markers and not any((out / m).is_file() for m in markers):
                    raise IKMDNError(f"--out {out} holds files but no earlier run "
                                     f"({' or '.join(markers)}); --force only replaces a run: "
                                     "choose another folder")
                for name in own:
                    (out / name).unlink(missing_ok=True)
            for tmp in stale:
                tmp.unlink(missing_ok=True)
            yield out
        finally:
            lock.release()


def check_output_file(path: str | Path, force: bool) -> Path:
    """A file path the job may write: not a folder nor any other non-regular file (a device, a
    FIFO, a socket), its parent a folder (created if missing), not overwritten unless force."""
    path = Path(path)
    if path.is_dir():
        raise IKMDNError(f"{path} is a folder; give a file name")
    if path.exists() or path.is_symlink():
        if path.exists() and not path.is_file():
            raise IKMDNError(f"{path} exists and is not a regular file; give a file name")
        if not force:
            raise IKMDNError(f"{path} already exists; pass --force to overwrite it")
    for parent in path.parents:  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise IKMDNError(f"cannot write {path}: {parent} is not a folder")
            break
    return path


def current_umask() -> int:
    """The process umask, read without changing it where /proc tells it (Linux), else by the
    set-and-restore of os.umask (briefly visible to other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _raise_for_signal(signum, frame):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM (and SIGHUP) SystemExit(128 +
    signal), so that `finally` clean-ups run; the previous handlers come back afterwards. Outside
    the main thread (where Python cannot set handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {}
    try:
        for signum in wanted:
            old = signal.getsignal(signum)
            if old is signal.SIG_IGN:  # e.g. nohup: the user asked to ignore it
                continue
            previous[signum] = old
            signal.signal(signum, _raise_for_signal)
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a fresh temporary file beside path, then move it onto path: readers
    never see half a file, and no other file of the user's is touched.

    On any exception from write (a full disk: OSError ENOSPC), and on SIGINT/SIGTERM during the
    write, the temporary is removed and the exception propagates (KeyboardInterrupt, or
    SystemExit(128 + signal)); path is then untouched. The file ends with mode 0o666 & ~umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_raise():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.close(fd)
            write(Path(tmp))
            os.chmod(tmp, stat.S_IMODE(0o666 & ~current_umask()))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
