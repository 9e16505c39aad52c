"""Copy products to the archive with SHA-256 verification, and measure disk use.

Plain functions on paths (no Prefect, no catalog); ``tasks/archive.py`` decides
what to archive and records it. A *product* is a file (a FITS image) or a
directory tree (a Measurement Set, a caltable, a QA directory). Its *manifest*
maps each file's path relative to the product (``""`` for a single file) to its
size and SHA-256; its *digest* is the file's SHA-256, or, for a directory, the
SHA-256 of its manifest in ``sha256sum`` format.

A copy is written under a temporary name beside its destination
(``.<name>.partial-<uuid>``), fsynced, dropped from the page cache, read back and
compared with the source's manifest, and only then renamed into place: a killed
copy leaves only a temporary file (removed by the next copy of the same product),
and a destination that exists but does not match its source (damaged, half
written by something else) is replaced. Nothing here deletes a source unless it
is asked to (:func:`remove_product`); the caller does so only after a verified copy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from contimg.errors import ContimgError

#: Bytes read at a time when hashing and copying.
CHUNK_BYTES = 8 * 2**20
PARTIAL_MARK = ".partial-"
STALE_MARK = ".stale-"


class ArchiveVerificationError(ContimgError):
    """An archived copy does not match its source (or its recorded checksums). The source is kept."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a manifest: size in bytes and SHA-256 (hex)."""

    size: int
    sha256: str


Manifest = dict[str, FileEntry]


@dataclass(frozen=True)
class CopyResult:
    """What :func:`archive_copy` did.

    Attributes
    ----------
    dest : Path
        The verified copy.
    manifest : dict
        Relative path -> :class:`FileEntry` of the source (equal to the copy's).
    digest : str
        :func:`manifest_digest` of ``manifest``.
    copied : bool
        False when a matching copy was already in place (nothing written).
    seconds : float
        Wall-clock time, s.
    """

    dest: Path
    manifest: Manifest
    digest: str
    copied: bool
    seconds: float

    @property
    def n_files(self) -> int:
        return len(self.manifest)

    @property
    def bytes(self) -> int:
        """Apparent size of the product (holes of sparse files included), bytes."""
        return sum(e.size for e in self.manifest.values())


def sha256_file(path: str | os.PathLike, *, chunk_bytes: int = CHUNK_BYTES) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buffer = bytearray(chunk_bytes)
        view = memoryview(buffer)
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _files(root: Path) -> list[str]:
    """Relative paths of every file under a product (``[""]`` for a file), sorted.

    Raises
    ------
    ArchiveVerificationError
        For a symbolic link or a special file: the archive copies bytes only,
        and a link would archive something other than the product.
    """
    if root.is_symlink() or not (root.is_file() or root.is_dir()):
        raise ArchiveVerificationError(f"{root}: not a regular file or directory; archive it by hand")
    if root.is_file():
        return [""]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                raise ArchiveVerificationError(f"{path}: a link or special file inside {root}; archive it by hand")
            found.append(str(path.relative_to(root)))
    return sorted(found)


def _member(root: Path, rel: str) -> Path:
    return root / rel if rel else root


def manifest_of(path: str | os.PathLike) -> Manifest:
    """The manifest of a product: every file's size and SHA-256 (reads every byte)."""
    root = Path(path)
    return {rel: FileEntry(_member(root, rel).stat().st_size, sha256_file(_member(root, rel)))
            for rel in _files(root)}


def manifest_lines(manifest: Manifest, prefix: str = "") -> list[str]:
    """``sha256sum`` lines (``<hex>  <path>``) of a manifest, paths joined to ``prefix``, sorted."""
    return [f"{manifest[rel].sha256}  {os.path.join(prefix, rel) if rel else prefix}" for rel in sorted(manifest)]


def manifest_digest(manifest: Manifest) -> str:
    """The product's digest: a single file's SHA-256, or the SHA-256 of a directory's manifest lines."""
    if list(manifest) == [""]:
        return manifest[""].sha256
    return hashlib.sha256("".join(line + "\n" for line in manifest_lines(manifest)).encode()).hexdigest()


def compare(path: str | os.PathLike, expected: Manifest) -> list[str]:
    """What differs between the product at ``path`` and ``expected`` (empty: it verifies).

    Reads every byte of ``path``. Files missing, extra, of another size or another
    SHA-256 are each one message.
    """
    root = Path(path)
    if not root.exists():
        return [f"{root} does not exist"]
    try:
        found = _files(root)
    except ArchiveVerificationError as exc:
        return [str(exc)]
    problems = [f"{_member(root, rel)}: missing" for rel in sorted(set(expected) - set(found))]
    problems += [f"{_member(root, rel)}: not in the source" for rel in sorted(set(found) - set(expected))]
    for rel in sorted(set(found) & set(expected)):
        member = _member(root, rel)
        size = member.stat().st_size
        if size != expected[rel].size:
            problems.append(f"{member}: {size} bytes, expected {expected[rel].size}")
        elif sha256_file(member) != expected[rel].sha256:
            problems.append(f"{member}: SHA-256 differs from the source's")
    return problems


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a file's bytes to ``dst`` (created), keeping the holes of a sparse file, then fsync it.

    A Measurement Set's unwritten MODEL_DATA/CORRECTED_DATA are holes (3.2 GB of
    7.3 GB for a full group): copying the data segments only (``SEEK_DATA``/``SEEK_HOLE``)
    keeps the copy as small as the original. Where the filesystem cannot tell, the
    whole file is copied.
    """
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        size = os.fstat(fin.fileno()).st_size
        for start, end in _data_segments(fin.fileno(), size):
            fin.seek(start)
            fout.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = fin.read(min(CHUNK_BYTES, remaining))
                if not chunk:
                    raise OSError(f"{src}: shorter than its size while copying (being written?)")
                fout.write(chunk)
                remaining -= len(chunk)
        fout.truncate(size)
        os.fsync(fout.fileno())
    shutil.copystat(src, dst)


def _data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) byte ranges holding data; the whole file where holes cannot be found."""
    if size == 0:
        return []
    if not hasattr(os, "SEEK_DATA"):
        return [(0, size)]
    segments, offset = [], 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after offset
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            segments.append((start, min(end, size)))
            offset = end
    except OSError:
        return [(0, size)]
    return segments


def _drop_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages, so verification reads the storage."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _copy_tree(src: Path, dst: Path, files: list[str]) -> None:
    if files == [""]:
        copy_file(src, dst)
        _drop_cache(dst)
        return
    for dirpath, dirnames, _ in os.walk(src):  # every directory, empty ones too (CASA tables have some)
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
    for rel in files:
        copy_file(src / rel, dst / rel)
        _drop_cache(dst / rel)
    for dirpath, _, _ in os.walk(dst, topdown=False):
        _fsync_dir(Path(dirpath))


def remove_partials(dest: str | os.PathLike) -> list[Path]:
    """Remove temporary copies of ``dest`` left by a killed copy (and a replaced copy's leftovers)."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    removed = []
    for entry in dest.parent.iterdir():
        if entry.name.startswith(f".{dest.name}{PARTIAL_MARK}") or entry.name.startswith(f".{dest.name}{STALE_MARK}"):
            _remove(entry)
            removed.append(entry)
    return removed


def archive_copy(src: str | os.PathLike, dest: str | os.PathLike, *, manifest: Manifest | None = None) -> CopyResult:
    """Copy a product to ``dest`` and verify the copy byte for byte against the source's SHA-256.

    Parameters
    ----------
    src : path-like
        The product (file or directory). Read, never modified.
    dest : path-like
        Where the copy goes. A matching copy already there is kept (nothing
        written); a different one is replaced, only by a verified copy.
    manifest : dict, optional
        The source's manifest when already computed (:func:`manifest_of`).

    Returns
    -------
    CopyResult

    Raises
    ------
    ArchiveVerificationError
        The copy read back differs from the source; the temporary copy is removed,
        ``dest`` and the source are left as they were.
    OSError
        The copy could not be written (a full disk): nothing is left at ``dest``
        that was not there before.
    """
    started = time.perf_counter()
    src, dest = Path(src), Path(dest)
    manifest = manifest if manifest is not None else manifest_of(src)
    digest = manifest_digest(manifest)
    remove_partials(dest)
    if dest.exists() and not compare(dest, manifest):
        return CopyResult(dest, manifest, digest, False, time.perf_counter() - started)
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}{PARTIAL_MARK}{uuid.uuid4().hex}")
    try:
        _copy_tree(src, temp, sorted(manifest))
        problems = compare(temp, manifest)
        if problems:
            raise ArchiveVerificationError(
                f"copy of {src} to {dest} failed verification ({len(problems)} problem(s): {'; '.join(problems[:3])}); "
                "the source is kept; check the archive disk and run the archive again")
        if dest.exists() or dest.is_symlink():
            # a rename cannot replace a non-empty directory: move the bad copy aside first
            stale = dest.with_name(f".{dest.name}{STALE_MARK}{uuid.uuid4().hex}")
            os.rename(dest, stale)
            os.rename(temp, dest)
            _remove(stale)
        else:
            os.rename(temp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        if temp.exists():
            _remove(temp)
        raise
    return CopyResult(dest, manifest, digest, True, time.perf_counter() - started)


def remove_product(path: str | os.PathLike) -> None:
    """Delete a product (file or tree) and make the deletion durable. Call only after a verified copy."""
    path = Path(path)
    _remove(path)
    _fsync_dir(path.parent)


def read_sha256sums(path: str | os.PathLike) -> dict[str, str]:
    """``sha256sum``-format file -> {path: hex}; ``{}`` if it does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, _, name = line.partition("  ")
            out[name] = digest
    return out


def write_sha256sums(path: str | os.PathLike, entries: dict[str, str]) -> None:
    """Write {path: hex} in ``sha256sum`` format (sorted), atomically: ``sha256sum -c`` checks it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}{PARTIAL_MARK}{uuid.uuid4().hex}")
    with open(temp, "w") as fh:
        fh.writelines(f"{entries[name]}  {name}\n" for name in sorted(entries))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def manifest_from_sha256sums(entries: dict[str, str], prefix: str, root: Path) -> Manifest:
    """The manifest of the product at ``prefix`` (a path key of ``entries``) with sizes read from ``root``.

    Used to verify an archived product whose source is gone: the checksums
    recorded when it was copied, against its bytes now.
    """
    out: Manifest = {}
    for name, digest in entries.items():
        if name == prefix:
            rel = ""
        elif name.startswith(prefix + "/"):
            rel = name[len(prefix) + 1:]
        else:
            continue
        member = _member(root, rel)
        out[rel] = FileEntry(member.stat().st_size if member.exists() else -1, digest)
    return out


@dataclass(frozen=True)
class Usage:
    """Disk use of one kind of product: bytes allocated, apparent bytes, files."""

    bytes: int
    apparent_bytes: int
    n_files: int


def disk_usage(root: str | os.PathLike) -> dict[str, Usage]:
    """Disk use under ``root`` per top-level directory (``ms``, ``images``...; files at the top: ``"."``).

    ``bytes`` is what the filesystem allocated (``st_blocks``; a sparse MS counts
    its data only), ``apparent_bytes`` the sum of file sizes. Symbolic links are
    not followed. A missing ``root`` gives ``{}``.
    """
    root = Path(root)
    totals: dict[str, list[int]] = {}
    if not root.is_dir():
        return {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        kind = rel.parts[0] if rel.parts else "."
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:  # removed while we walked
                continue
            t = totals.setdefault(kind, [0, 0, 0])
            t[0] += st.st_blocks * 512
            t[1] += st.st_size
            t[2] += 1
        if not rel.parts:
            for name in dirnames:
                totals.setdefault(name, [0, 0, 0])
    return {kind: Usage(*t) for kind, t in sorted(totals.items())}
