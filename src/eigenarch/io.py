"""Atomic file writes (a temporary file beside the target, then renamed over it), the lock
that keeps a second process out of an output, and the one reader of ``torch.save`` files,
which never runs code from them."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import socket
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from io import BytesIO
from pathlib import Path
from typing import Any

import torch

from eigenarch.errors import EigenarchError

try:
    import fcntl
except ImportError:  # not POSIX: outputs are not locked
    fcntl = None

#: This host, as the temporary files of atomic writes name it (with the writer's pid).
HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
#: The name ``.TARGET.HOST-PID.RANDOM.tmp`` of an atomic write's temporary file.
TEMP_NAME = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")


#: Why a write fails that the user can fix: a full disk or quota, a read-only or foreign
#: folder, a symbolic link loop or a file where a folder should be on the way.
UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                        errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG})  # fmt: skip


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched, so a
    reader never sees a half-written file; a full disk or a read-only folder (at the write or
    the rename) is a one-line error naming ``path``. The temporary file's name holds this
    host and process id; those that a killed writer left in the folder are removed first.
    """
    target = output_file(path)
    with unwritable_as_error(target):
        make_folder(target.parent)
        remove_stale_temps(target.parent)
        prefix = f".{target.name}.{HOST}-{os.getpid()}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with unwritable_as_error(target):
            yield tmp_path
            # mkstemp, and writers that recreate the file (safetensors), leave 0600: usual mode
            os.chmod(tmp_path, 0o666 & ~current_umask())
            os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def unwritable_as_error(target: Path) -> Iterator[None]:
    """Turn an ``OSError`` of :data:`UNWRITABLE` kind in the block into a one-line
    :class:`EigenarchError` naming ``target`` (and saying that a file there is intact)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in UNWRITABLE:
            raise
        kept = "; the previous file is intact" if target.is_file() else ""
        reason = exc.strerror or str(exc)
        raise EigenarchError(f"{target}: cannot write ({reason}){kept}") from None


def check_writable(path: str | os.PathLike[str], folder: bool = False) -> Path:
    """``path`` as :func:`output_file` checks it (a ``folder`` to write into: as
    :func:`make_folder` does, without making it), and a temporary file created and removed
    in it (or the nearest folder above that exists, where the folder will be made): a
    one-line error now for a read-only or full output, not after hours of work."""
    target = Path(path) if folder else output_file(path)
    place = target if folder else target.parent
    _check_on_the_way(place)
    while not place.exists() and place != place.parent:
        place = place.parent
    with unwritable_as_error(target):
        prefix = f".{target.name}.{HOST}-{os.getpid()}."
        with tempfile.TemporaryFile(prefix=prefix, suffix=".tmp", dir=place):
            pass
    return target


def remove_stale_temps(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Remove from ``folder`` (and its subfolders with ``recursive``) the temporary files of
    atomic writes that a killed process left: those named with this host and the id of a
    process that no longer runs. Returns the files removed."""
    pattern = "**/.*.tmp" if recursive else ".*.tmp"
    removed = []
    for path in sorted(Path(folder).glob(pattern)):
        match = TEMP_NAME.match(path.name)
        if match and match["host"] == HOST and not _running(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


@contextmanager
def output_lock(
    path: str | os.PathLike[str], option: str = "--out", folder: bool = True
) -> Iterator[Path]:
    """Hold the lock of the output ``path`` (a ``folder``'s ``.lock``, else ``.NAME.lock``
    beside the file) while the block runs: another process given the same output meanwhile
    gets a one-line error naming ``option``. The OS releases the lock when its holder ends,
    however it ends, so a killed run never leaves it stuck. Holding a folder's lock, the
    temporary files killed writers left anywhere in it are removed first.
    """
    path = Path(path)
    lock = path / ".lock" if folder else path.with_name(f".{path.name}.lock")
    if fcntl is None:
        yield path
        return
    made = not lock.parent.exists()
    with unwritable_as_error(path):
        make_folder(lock.parent)
        handle = _acquire(lock, f"{option} {path}")
    try:
        if folder:
            remove_stale_temps(path, recursive=True)
        yield path
    finally:
        lock.unlink(missing_ok=True)  # while still held: a waiting opener sees a new file
        handle.close()
        if made:  # nothing written into it: no empty folder left
            with suppress(OSError):
                lock.parent.rmdir()


def lock_holder(path: str | os.PathLike[str], wait: bool = False) -> int | None:
    """The pid holding the lock of the output folder ``path`` (:func:`output_lock`), or
    None where no process holds it; with ``wait``, first wait until none does."""
    lock = Path(path) / ".lock"
    if fcntl is None or not lock.is_file():
        return None
    with lock.open("r", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = handle.read().strip()
            return int(holder) if holder.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _acquire(lock: Path, what: str) -> Any:
    """``lock`` opened and ``flock``-ed, holding this process's id; a one-line error if
    another process holds it."""
    while True:
        handle = lock.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            by = f" (pid {holder})" if holder.isdigit() else ""
            message = f"{what}: in use by another process{by}; wait for it to end"
            raise EigenarchError(message) from None
        try:
            same = os.fstat(handle.fileno()).st_ino == lock.stat().st_ino
        except FileNotFoundError:  # its holder removed it as it finished
            same = False
        if same:
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return handle
        handle.close()


def make_folder(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p path``; a one-line error where ``path`` (or a folder above it) is a file or
    a symbolic link that leads nowhere (a loop, a missing target)."""
    path = Path(path)
    _check_on_the_way(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_on_the_way(path: Path) -> None:
    """A one-line error where ``path`` or a folder above it is a file or a symbolic link
    that leads nowhere."""
    for folder in (path, *path.parents):
        if folder.is_symlink() and not folder.exists():
            raise EigenarchError(f"{folder}: a symbolic link that leads nowhere (a loop or a "
                                 "missing target); expected a folder")  # fmt: skip
        if folder.exists() and not folder.is_dir():
            raise EigenarchError(f"{folder}: is a file; expected a folder")


def output_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a file to write; a one-line error if it is an existing folder (check an
    ``--out`` with it before long work, not only when the result is written)."""
    target = Path(path)
    if target.is_dir():
        raise EigenarchError(f"{target}: is a folder; expected the path of a file to write")
    return target


def current_umask() -> int:
    """The process's umask (read by setting it and back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON (keys in insertion order, trailing newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def load_torch(path: str | os.PathLike[str], what: str = "torch file") -> Any:
    """``torch.load(path)`` on the CPU with ``weights_only=True``: tensors, numbers, strings
    and containers only, never code from the file; and ``argparse.Namespace`` (plain
    attributes, no code), which the checkpoints of torchvision's reference scripts hold as
    their ``args``.

    A missing file, a folder, or a file that is empty, truncated, of another format (JSON,
    say) or that holds other objects is a one-line error naming ``path`` and ``what`` was
    expected (never torch's advice to load it with ``weights_only=False``). The file is read
    once: the check and the load both read its bytes in memory.
    """
    path = _existing_file(path, what)
    data = file_bytes(path)
    damaged = _zip_damage(BytesIO(data))
    if damaged:
        raise EigenarchError(f"{path}: not a readable {what} (damaged torch.save file: {damaged})")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # a pickle of another protocol (a foreign or hostile file) is refused, not warned of
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        reason = _unreadable(data, exc)
        if reason.startswith("refused"):
            raise EigenarchError(f"{path}: {reason}") from None
        raise EigenarchError(f"{path}: not a readable {what} ({reason})") from None


def load_torch_fields(path: str | os.PathLike[str], what: str = "torch file") -> Any:
    """What :func:`load_torch` returns, for reading a large file's small fields: only its
    pickle is read, its tensors are mapped (``mmap``), not read, nor CRC-checked. A file
    that cannot be mapped so (not a zip archive, damaged) is left to :func:`load_torch`."""
    path = _existing_file(path, what)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return load_torch(path, what)


def file_bytes(path: Path) -> bytes:
    """The whole file (the one place torch files are read from disk)."""
    return path.read_bytes()


def _existing_file(path: str | os.PathLike[str], what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise EigenarchError(f"{path}: is a folder; expected a {what}")
    if not path.is_file():
        raise EigenarchError(f"{path}: {what} not found")
    return path


def _zip_damage(path: Path | BytesIO) -> str | None:
    """What is wrong with the zip archive that ``torch.save`` writes, or None: every record's
    CRC-32 is checked, which ``torch.load`` does not do (a flipped byte in a tensor would load
    silently). Files that are not zip archives are left to ``torch.load``."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, UnicodeDecodeError, EOFError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return f"record {bad.split('/', 1)[-1]} fails its CRC check" if bad else None


#: Modules and builtins whose functions in a pickle would run code (torch's loader refuses
#: them, as every global not allowed; these are named as what they are).
_CODE_MODULES = frozenset(
    "os posix nt sys subprocess shutil importlib runpy pty socket code ctypes pickle".split()
)
_CODE_BUILTINS = frozenset("eval exec compile __import__ getattr setattr open breakpoint".split())


def _unreadable(data: bytes, exc: Exception) -> str:
    """Why ``torch.load`` failed on a file of ``data``, in a few words."""
    blocked = re.search(r"GLOBAL ([\w.]+) whose module [\w.]+ is blocked", str(exc))
    refused = blocked or re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if refused:
        name = refused.group(1)
        module, _, attribute = name.rpartition(".")
        if (
            blocked
            or module.split(".")[0] in _CODE_MODULES
            or (module in ("", "builtins") and attribute in _CODE_BUILTINS)
        ):
            return f"refused: the file asks to run code ({name})"
        return f"it holds a {name} object; only tensors and plain data are loaded"
    head = data[:64].lstrip()
    if not head:
        return "empty file"
    if head[:1] in (b"{", b"["):
        return "a JSON file, not a torch.save file"
    if head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x01", b"\x02")):
        return "truncated or damaged torch.save file"
    if head[:1] == b"\x80":
        return "a plain pickle, not a torch.save file"
    return "not a torch.save file"


def read_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Read a JSON object from ``path``; one-line errors name ``what``, the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EigenarchError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:  # a damaged file, or not a text file at all
        raise EigenarchError(f"{what} {path}: not UTF-8 text (byte {exc.start}); expected "
                             "a JSON file (damaged?)") from None  # fmt: skip
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EigenarchError(
            f"{what} {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(obj, dict):
        raise EigenarchError(f"{what} {path}: expected a JSON object, got {type(obj).__name__}")
    return obj
