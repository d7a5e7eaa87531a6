"""How rtpanoptic writes and deletes files: the one place for the rules every command follows.

- :func:`check_outputs`: an output that is, resolves to (symbolic links) or hard-links to one of
  the command's inputs, or another of its outputs, is a :class:`UsageError` raised before any work.
- :func:`replacing` (and :func:`write_text`, :func:`save_png`): every file is written to a
  temporary file beside it and renamed over it (``os.replace``).  An interrupted write leaves the
  previous file or none, never half of one; a symbolic or hard link at the target is replaced,
  never written through; the file's mode follows the umask (not ``mkstemp``'s 0600).
- :func:`output_lock` / :func:`locks_output`: one run at a time per output folder (``fcntl.flock``
  on a hidden lock file holding the pid); a second run gets a one-line :class:`UsageError` naming
  the folder and the first run's pid.
- :class:`OwnedFiles`: the record, in a hidden file of a folder, of the files a run wrote there
  (relative path and size in bytes).  Only recorded files that are still as written (regular
  files of the recorded size, reached through real folders inside the folder, never a link) are
  ever deleted; nothing is deleted by name alone.
- :func:`begin_run`: an output folder holds one run.  The previous run's files are removed first
  (its index first of all: the last file written is the first removed), then this run's files are
  recorded as they are written; the index (``panoptic.json``, ``metrics.json``) is written last.
  So an index, when there is one, lists exactly the files of the run that wrote it, and an
  interrupted run leaves no index.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .usage import UsageError

LOCK_NAME = ".rtpanoptic.lock"
RECORD_NAME = ".rtpanoptic-files.jsonl"

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------- outputs vs inputs
def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file or folder: equal after resolving links, or one inode
    (hard links, bind mounts).  A path that does not exist is compared by its resolved name."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: PathLike, folder: PathLike) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(folder).rstrip(os.sep) + os.sep)


def _identity(path: PathLike, parents: dict[str, str] | None = None) -> tuple[str, tuple[int, int] | None]:
    """``(resolved path, (device, inode) or None when missing)``.  ``parents``: a cache of resolved
    folders (many outputs share a few folders: one ``lstat`` per file then, not one per component)."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    parents = {} if parents is None else parents
    if folder not in parents:
        parents[folder] = os.path.realpath(folder)
    try:
        st = os.lstat(path)
    except OSError:
        return os.path.join(parents[folder], name), None
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError:
            return os.path.realpath(path), None
        return os.path.realpath(path), (st.st_dev, st.st_ino)
    return os.path.join(parents[folder], name), (st.st_dev, st.st_ino)


def check_outputs(outputs: Iterable[tuple[str, PathLike | None]], inputs: Iterable[tuple[str, PathLike | None]]) -> None:
    """Raise :class:`UsageError` (one line) when an output would replace what the command reads.

    ``outputs`` / ``inputs``: ``(what, path)`` pairs, ``what`` naming the option in the message
    (None paths are skipped).  An output is refused when it is the same file or folder as an
    input (:func:`same_file`: equal once links are resolved, or one inode), when it is an existing
    file inside an input folder, or when two outputs are one file.  Linear in the number of paths.
    """
    named: dict[str, tuple[str, PathLike]] = {}
    inodes: dict[tuple[int, int], tuple[str, PathLike]] = {}
    folders: list[tuple[str, PathLike, str]] = []
    parents: dict[str, str] = {}
    for what, p in inputs:
        if p is None:
            continue
        real, inode = _identity(p, parents)
        named.setdefault(real, (what, p))
        if inode is not None:
            inodes.setdefault(inode, (what, p))
            if os.path.isdir(real):
                folders.append((what, p, real.rstrip(os.sep) + os.sep))
    out_named: dict[str, tuple[str, PathLike]] = {}
    out_inodes: dict[tuple[int, int], tuple[str, PathLike]] = {}
    for what, out in outputs:
        if out is None:
            continue
        real, inode = _identity(out, parents)
        hit = named.get(real) or (inodes.get(inode) if inode is not None else None)
        if hit is None and inode is not None:
            hit = next(((w, p) for w, p, folder in folders if real.startswith(folder)), None)
        if hit is not None:
            verb = "would replace a file of" if os.path.isdir(hit[1]) and not same_file(out, hit[1]) else "is"
            raise UsageError(f"{what} {out} {verb} {hit[0]} {hit[1]}, which this command reads; "
                             f"choose another output")
        other = out_named.get(real) or (out_inodes.get(inode) if inode is not None else None)
        if other is not None:
            raise UsageError(f"{what} {out} and {other[0]} {other[1]} are the same file; give them different paths")
        out_named[real] = (what, out)
        if inode is not None:
            out_inodes[inode] = (what, out)


# ----------------------------------------------------------------------------------- writing
def file_mode() -> int:
    """The mode a new file gets from ``open()`` under the current umask (0644 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_beside(path: PathLike, prefix: str | None = None, suffix: str | None = None) -> Path:
    """A new empty file in ``path``'s folder (hidden, ``.<name>.XXXXXXXX<suffix>``, default suffix
    ``path``'s own so that writers that go by the suffix still work), mode per :func:`file_mode`."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}." if prefix is None else prefix,
                                suffix=path.suffix if suffix is None else suffix)
    os.close(fd)
    os.chmod(name, file_mode())
    return Path(name)


@contextlib.contextmanager
def replacing(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Write ``path`` atomically: yields a temporary path beside it (``suffix``, default ``path``'s
    own) to write to, renamed over ``path`` when the block ends without an error (removed otherwise).

    A link at ``path`` is replaced, not followed.  Inside a folder of a run started with
    :func:`begin_run`, symbolic links standing for the sub-folders on the way are replaced by real
    folders, and the file is recorded as the run's.
    """
    path = Path(path)
    owner = _owner_of(path)
    if owner is not None:
        owner.real_parents(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path, suffix=suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if owner is not None:
        owner.add(path)


def write_text(path: PathLike, text: str) -> Path:
    """``Path(path).write_text(text)`` through :func:`replacing`."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: PathLike, data, indent: int | None = None) -> Path:
    """``data`` as JSON at ``path`` through :func:`replacing`."""
    return write_text(path, json.dumps(data, indent=indent))


def save_png(path: PathLike, array) -> Path:
    """An image array (uint8 ``[H, W]`` / ``[H, W, 3]``) as a PNG at ``path``, through :func:`replacing`."""
    from PIL import Image

    with replacing(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


# ----------------------------------------------------------------------------------- recorded files
class OwnedFiles:
    """The files a run wrote under ``root``: one JSON line ``{"path": relative, "size": bytes}``
    per file in the hidden ``root/<record>``, appended as each file is written (an interrupted
    run's files are recorded too).  What a later run may delete, and nothing else."""

    def __init__(self, root: PathLike, record: str = RECORD_NAME):
        self.root = Path(root)
        self.record_path = self.root / record

    def recorded(self) -> dict[str, int]:
        """``{relative path: size}`` in the order last written; {} without a record (or when the
        record is a link, or unreadable lines)."""
        try:
            if not stat.S_ISREG(os.lstat(self.record_path).st_mode):
                return {}
            lines = self.record_path.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return {}
        files: dict[str, int] = {}
        for line in lines:
            try:
                entry = json.loads(line)
                rel, size = str(entry["path"]), int(entry["size"])
            except (ValueError, KeyError, TypeError):
                continue
            files.pop(rel, None)
            files[rel] = size
        return files

    def _real_dir(self, parts: tuple[str, ...], create: bool) -> Path | None:
        """``root/parts...`` as a chain of real folders: links replaced by folders and missing
        ones made (``create``), else None when one is a link or missing."""
        d = self.root
        for part in parts:
            d = d / part
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                if not create:
                    return None
                d.mkdir()
                continue
            if stat.S_ISLNK(st.st_mode):
                if not create:
                    return None
                d.unlink()
                d.mkdir()
            elif not stat.S_ISDIR(st.st_mode):
                return None if not create else d  # mkstemp below reports the file in the way
        return d

    def _relative(self, path: PathLike) -> tuple[str, ...] | None:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))
        parts = Path(rel).parts
        if not parts or parts[0] == ".." or os.path.isabs(rel) or ".." in parts:
            return None
        return parts

    def real_parents(self, path: PathLike) -> None:
        """Make the folders between ``root`` and the file ``path`` real folders (links replaced)."""
        parts = self._relative(path)
        self.root.mkdir(parents=True, exist_ok=True)
        if parts is not None:
            self._real_dir(parts[:-1], create=True)

    def add(self, path: PathLike) -> None:
        """Record the file ``path`` (inside ``root``) with its current size."""
        parts = self._relative(path)
        if parts is None:
            return
        line = json.dumps({"path": "/".join(parts), "size": os.lstat(path).st_size}) + "\n"
        if os.path.islink(self.record_path):
            os.unlink(self.record_path)
        fd = os.open(self.record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, file_mode())
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _still_ours(self, rel: str, size: int) -> Path | None:
        """The recorded file ``rel`` if it is still a regular file of ``size`` bytes reached
        through real folders inside ``root``; else None."""
        parts = Path(rel).parts
        if not parts or os.path.isabs(rel) or ".." in parts:
            return None
        folder = self._real_dir(parts[:-1], create=False)
        if folder is None:
            return None
        p = folder / parts[-1]
        try:
            st = os.lstat(p)
        except OSError:
            return None
        return p if stat.S_ISREG(st.st_mode) and st.st_size == size else None

    def remove(self, keep: Iterable[PathLike] = ()) -> list[Path]:
        """Delete the recorded files still as written, the last written first, except those that
        are, or lie inside, one of ``keep`` (the inputs of the run about to start); then the
        folders they leave empty and the record.  Returns the deleted files."""
        if not os.path.isdir(self.root):
            return []
        parents: dict[str, str] = {}
        kept = [_identity(k, parents) for k in keep]
        kept_names, kept_inodes = {real for real, _ in kept}, {inode for _, inode in kept if inode is not None}
        kept_folders = tuple(real.rstrip(os.sep) + os.sep for real, _ in kept if os.path.isdir(real))
        removed = []
        for rel, size in reversed(list(self.recorded().items())):
            p = self._still_ours(rel, size)
            if p is None:
                continue
            real, inode = _identity(p, parents)
            if real in kept_names or inode in kept_inodes or real.startswith(kept_folders):
                continue
            p.unlink()
            removed.append(p)
            for parent in Path(rel).parents:
                if str(parent) in ("", "."):
                    break
                with contextlib.suppress(OSError):  # only empty, real folders go
                    if not os.path.islink(self.root / parent):
                        os.rmdir(self.root / parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path)
        return removed

    @contextlib.contextmanager
    def recording(self) -> Iterator[OwnedFiles]:
        """Within the block, every file written under ``root`` through :func:`replacing` is recorded."""
        key = os.path.abspath(self.root)
        _runs[key] = self
        try:
            yield self
        finally:
            _runs.pop(key, None)

    def foreign(self, meta: Iterable[str] = ()) -> list[str]:
        """Entries under ``root`` (relative paths) that are not recorded files still as written:
        links (never followed), other files, and the top-level names not in ``meta`` (the record
        and the lock file are always allowed); folders holding only recorded files are not listed."""
        allowed = {self.record_path.name, LOCK_NAME, *meta}
        recorded = self.recorded()
        found: list[str] = []

        def walk(folder: Path, rel: tuple[str, ...]) -> None:
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                parts = (*rel, entry.name)
                name = "/".join(parts)
                if not rel and entry.name in allowed and entry.is_file(follow_symlinks=False):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path), parts)
                elif name not in recorded or self._still_ours(name, recorded[name]) is None:
                    found.append(name)

        walk(self.root, ())
        return found


# ----------------------------------------------------------------------------------- locks and runs
_held: dict[str, list] = {}  # realpath of a locked folder -> [fd, depth]
_runs: dict[str, OwnedFiles] = {}  # abspath of a locked folder -> its run's record (begin_run)


def _key(folder: PathLike) -> str:
    return os.path.realpath(folder)


def _owner_of(path: PathLike) -> OwnedFiles | None:
    if not _runs:
        return None
    p = os.path.abspath(path)
    for root, owned in _runs.items():
        if p.startswith(root.rstrip(os.sep) + os.sep):
            return owned
    return None


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"


@contextlib.contextmanager
def output_lock(folder: PathLike, what: str = "output folder") -> Iterator[Path]:
    """Hold the folder ``folder`` (created if missing) for this process: ``fcntl.flock`` on
    ``folder/.rtpanoptic.lock`` (which holds the pid; removed at the end).  Another process
    holding it: :class:`UsageError` naming ``what``, the folder and that process's pid.  Re-entrant
    within a process.  Yields the folder."""
    folder = Path(folder)
    key = _key(folder)
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    lock = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            if os.path.islink(lock):
                os.unlink(lock)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, file_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise UsageError(f"{what} {folder} is in use by another rtpanoptic run ({holder}); wait for it to "
                                 f"end or choose another folder") from None
            # the run that held it may have removed the file meanwhile: lock the file that is there
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(lock).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        raise UsageError(f"{what} {folder}: cannot take its lock file ({exc.strerror or exc})") from None
    _held[key] = [fd, 1]
    try:
        yield folder
    finally:
        _held.pop(key, None)
        _runs.pop(os.path.abspath(folder), None)
        with contextlib.suppress(OSError):
            os.unlink(lock)  # still locked: a waiting run re-opens the new file
        os.close(fd)


def begin_run(folder: PathLike, keep: Iterable[PathLike] = ()) -> OwnedFiles:
    """Start a run's output in ``folder`` (held with :func:`output_lock`): delete the previous
    run's recorded files (:meth:`OwnedFiles.remove`, except ``keep``: this run's inputs), then
    record every file written under ``folder`` through :func:`replacing` until the lock ends."""
    if _key(folder) not in _held:
        raise RuntimeError(f"begin_run: {folder} is not held with output_lock")
    owned = OwnedFiles(folder)
    owned.remove(keep)
    _runs[os.path.abspath(folder)] = owned
    return owned


def _is_main_process() -> bool:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") in ("", "0")


def main_process_lock(folder: PathLike | None, what: str):
    """:func:`output_lock` on the main process (rank 0 under torchrun), a no-op elsewhere or for None."""
    if folder is None or not _is_main_process():
        return contextlib.nullcontext(folder)
    return output_lock(folder, what)


def locks_output(folder_of: Callable[..., PathLike | None], what: str):
    """Decorator: the function runs holding :func:`output_lock` on ``folder_of(**arguments)`` (its
    bound arguments by name; None: no lock), on the main process only (rank 0 under torchrun)."""

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with main_process_lock(folder_of(**bound.arguments), what):
                return fn(*args, **kwargs)

        return run

    return decorate
