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

import numpy as np

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


# --- the lean Measurement Set -------------------------------------------------------------
#
# An MS is archived *lean*: without the columns that are recomputed from what it keeps.
# MODEL_DATA and CORRECTED_DATA are left out (CORRECTED_DATA is DATA with the recorded
# caltables applied; MODEL_DATA is a prediction), and WEIGHT_SPECTRUM too when, in every
# row, it is WEIGHT repeated over the channels, bit for bit (the converter writes WEIGHT
# as the channels' common value when they agree). The copy is made without ever writing
# the columns it leaves out: every file is copied byte for byte, except the data files of
# the left-out columns (an empty sparse file of the same size stands in for each, never
# written), then casacore removes those columns from the copy, which deletes their files
# and rewrites the main table's description (``table.dat``). A keyword of the copy's main
# table (:data:`LEAN_KEYWORD`) says what was left out; :func:`expand_lean_ms` puts it back.
#
# Verification, before the copy is renamed into place: every file of the copy but the
# rewritten description and lock is the source's file (size and SHA-256, read back from the
# disk), and, through casacore, every kept column of the main table is equal cell for cell,
# bit for bit, to the source's (DATA, FLAG, UVW, TIME, WEIGHT, SIGMA... every row), the table
# and column keywords equal, and a left-out WEIGHT_SPECTRUM equal to the copy's WEIGHT over
# the channels. The copy's own checksums are its manifest.

#: Main-table columns a lean copy leaves out: recomputed from DATA and the recorded caltables.
RECOMPUTED_COLUMNS = ("MODEL_DATA", "CORRECTED_DATA")
#: Left out too when it is WEIGHT repeated over the channels in every row (bit for bit).
WEIGHT_SPECTRUM = "WEIGHT_SPECTRUM"
#: Keyword of a lean copy's main table: ``{"version", "dropped", "weight_spectrum"}``.
LEAN_KEYWORD = "CONTIMG_LEAN_ARCHIVE"
LEAN_VERSION = 1
#: Files of the main table a lean copy rewrites; every other file is a byte copy of the source's.
REWRITTEN_FILES = ("table.dat", "table.lock")
#: Rows read at a time when comparing columns (DATA of a full group: ~50 MB).
VERIFY_ROWS = 65536


@dataclass(frozen=True)
class LeanPlan:
    """What a lean copy of one MS leaves out.

    Attributes
    ----------
    dropped : tuple of str
        Main-table columns left out.
    kept : dict
        Column that could have been left out -> why it is kept.
    placeholders : frozenset of str
        Data files of the left-out columns (relative paths): never copied.
    removed : frozenset of str
        Every file of their data managers (the placeholders and the managers'
        header files): not in the copy.
    """

    dropped: tuple[str, ...]
    kept: dict
    placeholders: frozenset[str]
    removed: frozenset[str]


def is_ms(path: str | os.PathLike) -> bool:
    """Is ``path`` a casacore table directory (a Measurement Set or a caltable)?"""
    return Path(path).is_dir() and (Path(path) / "table.dat").is_file()


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _same(a, b) -> bool:
    """Equal shape, type and bits (NaN equal to the same NaN; -0.0 not equal to 0.0)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "biufc":
        return _bits(a) == _bits(b)
    return bool(np.array_equal(a, b))


def _weight_spectrum_is_weight(t) -> bool:
    """Is WEIGHT_SPECTRUM, in every row, WEIGHT repeated over the channels (bit for bit)?"""
    try:
        for start in range(0, t.nrows(), VERIFY_ROWS):
            n = min(VERIFY_ROWS, t.nrows() - start)
            spectrum, weight = t.getcol(WEIGHT_SPECTRUM, start, n), t.getcol("WEIGHT", start, n)
            if spectrum.ndim != 3 or weight.ndim != 2 or spectrum.dtype != weight.dtype:
                return False
            if not _same(spectrum, np.broadcast_to(weight[:, None, :], spectrum.shape)):
                return False
    except RuntimeError:  # a row without an array, variable shapes: keep the column as it is
        return False
    return True


def lean_plan(ms: str | os.PathLike) -> LeanPlan:
    """Which columns a lean copy of ``ms`` leaves out (reads WEIGHT_SPECTRUM once when present).

    A column is left out only when its data manager holds nothing else (the
    converter gives each per-channel column its own): a column sharing a
    hypercube with DATA (pyuvdata's layout) is kept, and said why.
    """
    from casacore.tables import table

    ms = Path(ms)
    with table(str(ms), ack=False) as t:
        columns = t.colnames()
        candidates = {c: "" for c in RECOMPUTED_COLUMNS if c in columns}
        kept = {}
        if WEIGHT_SPECTRUM in columns and "WEIGHT" in columns:
            if t.nrows() and _weight_spectrum_is_weight(t):
                candidates[WEIGHT_SPECTRUM] = ""
            else:
                kept[WEIGHT_SPECTRUM] = "differs from WEIGHT over the channels"
        dminfo = t.getdminfo()
    dropped, placeholders, removed = [], set(), set()
    top = [p.name for p in ms.iterdir()] if ms.is_dir() else []
    for dm in dminfo.values():
        mine = [c for c in dm["COLUMNS"] if c in candidates]
        if not mine:
            continue
        if len(mine) < len(dm["COLUMNS"]):
            for c in mine:
                kept[c] = f"shares data manager {dm['NAME']} with {', '.join(sorted(set(dm['COLUMNS']) - set(mine)))}"
            continue
        dropped += mine
        seq = dm.get("SEQNR")
        if seq is not None:  # its data files (the header file table.f<seq> is copied: the manager reads it)
            placeholders.update(name for name in top if name.startswith(f"table.f{seq}_"))
            removed.update(name for name in top if name == f"table.f{seq}" or name.startswith(f"table.f{seq}_"))
    return LeanPlan(tuple(c for c in columns if c in dropped), kept, frozenset(placeholders), frozenset(removed))


def _source_manifest(src: Path, plan: LeanPlan) -> Manifest:
    """The manifest of the files of ``src`` a lean copy keeps (left-out data files not read)."""
    return {rel: FileEntry(_member(src, rel).stat().st_size, sha256_file(_member(src, rel)))
            for rel in _files(src) if rel not in plan.removed}


def _byte_problems(copy: Path, source: Manifest, copied: Manifest) -> list[str]:
    """Files of the copy that are not the source's (the main table's description and lock aside)."""
    problems = []
    for rel in sorted(set(source) | set(copied)):
        if rel in REWRITTEN_FILES:
            if rel == "table.dat" and rel not in copied:
                problems.append(f"{copy / rel}: missing")
            continue
        if rel not in copied:
            problems.append(f"{copy / rel}: missing")
        elif rel not in source:
            problems.append(f"{copy / rel}: not in the source")
        elif copied[rel].size != source[rel].size:
            problems.append(f"{copy / rel}: {copied[rel].size} bytes, expected {source[rel].size}")
        elif copied[rel].sha256 != source[rel].sha256:
            problems.append(f"{copy / rel}: SHA-256 differs from the source's")
    return problems


def _keywords_equal(a, b, root_a: Path, root_b: Path) -> bool:
    """Keyword sets equal, a subtable reference (``Table: <root>/ANTENNA``) compared relative to its table."""
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(_keywords_equal(a[k], b[k], root_a, root_b) for k in a))
    if isinstance(a, str) or isinstance(b, str):
        def norm(v, root):
            return v.replace(f"Table: {root.resolve()}/", "Table: ./").replace(f"Table: {root}/", "Table: ./") \
                if isinstance(v, str) else v
        return norm(a, root_a) == norm(b, root_b)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_keywords_equal(x, y, root_a, root_b) for x, y in zip(a, b)))
    return _same(a, b)


def verify_lean(src: str | os.PathLike, copy: str | os.PathLike) -> list[str]:
    """What differs between a lean copy and its source in the columns it keeps (empty: it verifies).

    Reads every kept column of both main tables (every row) and compares the
    cells bit for bit, the table and column keywords, and a left-out
    WEIGHT_SPECTRUM with the copy's WEIGHT. The files (subtables included) are
    compared by :func:`archive_ms`.
    """
    from casacore.tables import table

    problems: list[str] = []
    with table(str(src), ack=False) as s, table(str(copy), ack=False) as c:
        keywords = c.getkeywords()
        lean = keywords.pop(LEAN_KEYWORD, None)
        if not isinstance(lean, dict) or "dropped" not in lean:
            return [f"{copy}: not a lean copy (no {LEAN_KEYWORD} keyword)"]
        dropped = [str(x) for x in np.atleast_1d(lean["dropped"])]
        expected = [col for col in s.colnames() if col not in dropped]
        if c.colnames() != expected:
            return [f"{copy}: columns {c.colnames()}, expected {expected}"]
        if s.nrows() != c.nrows():
            return [f"{copy}: {c.nrows()} rows, expected {s.nrows()}"]
        if not _keywords_equal(keywords, s.getkeywords(), Path(copy), Path(src)):
            problems.append(f"{copy}: table keywords differ from the source's")
        for col in expected:
            if not _keywords_equal(c.getcolkeywords(col), s.getcolkeywords(col), Path(copy), Path(src)):
                problems.append(f"{copy}: keywords of {col} differ from the source's")
            for start in range(0, s.nrows(), VERIFY_ROWS):
                n = min(VERIFY_ROWS, s.nrows() - start)
                try:
                    want = s.getcol(col, start, n)
                except RuntimeError:  # cells without a value (FLAG_CATEGORY): must be so in the copy too
                    try:
                        c.getcol(col, start, n)
                    except RuntimeError:
                        break
                    problems.append(f"{copy}: column {col} has values where the source has none")
                    break
                if not _same(c.getcol(col, start, n), want):
                    problems.append(f"{copy}: column {col} differs from the source's in rows {start}-{start + n - 1}")
                    break
        if WEIGHT_SPECTRUM in dropped:
            for start in range(0, s.nrows(), VERIFY_ROWS):
                n = min(VERIFY_ROWS, s.nrows() - start)
                spectrum, weight = s.getcol(WEIGHT_SPECTRUM, start, n), c.getcol("WEIGHT", start, n)
                if not _same(spectrum, np.broadcast_to(weight[:, None, :], spectrum.shape)):
                    problems.append(f"{copy}: WEIGHT_SPECTRUM of the source is not WEIGHT over the channels "
                                    f"in rows {start}-{start + n - 1}")
                    break
    return problems


def _make_lean(src: Path, temp: Path, plan: LeanPlan) -> None:
    """Write the lean copy of ``src`` at ``temp`` (see the section's comment)."""
    from casacore.tables import table

    for dirpath, _, _ in os.walk(src):
        (temp / Path(dirpath).relative_to(src)).mkdir(parents=True, exist_ok=True)
    for rel in _files(src):
        if rel in plan.placeholders:  # never written: a hole of the same size, removed with its column
            with open(temp / rel, "wb") as fh:
                fh.truncate((src / rel).stat().st_size)
            continue
        copy_file(src / rel, temp / rel)
        _drop_cache(temp / rel)
    with table(str(temp), ack=False, readonly=False) as t:
        t.removecols(list(plan.dropped))
        t.putkeyword(LEAN_KEYWORD, {"version": LEAN_VERSION, "dropped": list(plan.dropped),
                                    "weight_spectrum": "WEIGHT" if WEIGHT_SPECTRUM in plan.dropped else ""})
    left = sorted(rel for rel in plan.removed if (temp / rel).exists())
    if left:
        raise ArchiveVerificationError(f"lean copy of {src}: casacore left the data files {left}; archive it by hand")
    _drop_cache(temp / "table.dat")
    for dirpath, _, _ in os.walk(temp, topdown=False):
        _fsync_dir(Path(dirpath))


def archive_ms(src: str | os.PathLike, dest: str | os.PathLike) -> CopyResult:
    """Archive a Measurement Set lean (see the section's comment), verified; a plain verified copy if nothing is left out.

    Parameters
    ----------
    src : path-like
        The MS. Read, never modified.
    dest : path-like
        Where the copy goes. A lean copy already there that verifies against
        the source is kept (nothing written); anything else there is replaced,
        only by a verified copy.

    Returns
    -------
    CopyResult
        ``manifest`` and ``digest`` are the *copy's* (its files differ from the
        source's by the left-out columns and the rewritten ``table.dat``).

    Raises
    ------
    ArchiveVerificationError
        The copy differs from the source in what it keeps: nothing is left at
        ``dest`` that was not there before; the source is untouched.
    """
    started = time.perf_counter()
    src, dest = Path(src), Path(dest)
    if not is_ms(src):
        return archive_copy(src, dest)
    plan = lean_plan(src)
    if not plan.dropped:
        return archive_copy(src, dest)
    remove_partials(dest)
    source = _source_manifest(src, plan)
    if is_ms(dest) and not dest.is_symlink():
        problems = verify_lean(src, dest)
        if not problems:
            copied = manifest_of(dest)
            if not _byte_problems(dest, source, copied):
                return CopyResult(dest, copied, manifest_digest(copied), False, time.perf_counter() - started)
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}{PARTIAL_MARK}{uuid.uuid4().hex}")
    try:
        _make_lean(src, temp, plan)
        copied = manifest_of(temp)  # read back from the disk (the copies were dropped from the page cache)
        problems = _byte_problems(temp, source, copied) + verify_lean(src, temp)
        if problems:
            raise ArchiveVerificationError(
                f"lean copy of {src} to {dest} failed verification ({len(problems)} problem(s): "
                f"{'; '.join(problems[:3])}); the source is kept; check the archive disk and run the archive again")
        if dest.exists() or dest.is_symlink():
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
    return CopyResult(dest, copied, manifest_digest(copied), True, time.perf_counter() - started)


def lean_columns(ms: str | os.PathLike) -> list[str]:
    """The columns a lean copy left out (``[]``: a complete MS)."""
    from casacore.tables import table

    with table(str(ms), ack=False) as t:
        lean = t.getkeywords().get(LEAN_KEYWORD)
    return [str(x) for x in np.atleast_1d(lean["dropped"])] if isinstance(lean, dict) else []


def expand_lean_ms(ms: str | os.PathLike) -> list[str]:
    """Put back, in place, the columns a lean copy left out; return them (``[]``: nothing to do).

    MODEL_DATA and CORRECTED_DATA come back as the converter makes them
    (:func:`contimg.conversion.ms_layout.array_column`: preallocated, zero until
    written); WEIGHT_SPECTRUM as WEIGHT repeated over the channels, which the
    archive verified it was. CORRECTED_DATA is filled by applying the caltables
    (``tasks.archive.restore_group``).
    """
    from casacore.tables import table

    from contimg.conversion.ms_layout import array_column

    with table(str(ms), ack=False, readonly=False) as t:
        lean = t.getkeywords().get(LEAN_KEYWORD)
        if not isinstance(lean, dict):
            return []
        dropped = [str(x) for x in np.atleast_1d(lean["dropped"])]
        n_chan, n_pol = t.getcell("DATA", 0).shape
        for col in dropped:
            if col not in t.colnames():
                t.addcols(*array_column(col, n_pol=n_pol, n_chan=n_chan))
        if WEIGHT_SPECTRUM in dropped:
            for start in range(0, t.nrows(), VERIFY_ROWS):
                n = min(VERIFY_ROWS, t.nrows() - start)
                weight = t.getcol("WEIGHT", start, n)
                t.putcol(WEIGHT_SPECTRUM, np.ascontiguousarray(
                    np.broadcast_to(weight[:, None, :], (n, n_chan, n_pol))), start, n)
        t.removekeyword(LEAN_KEYWORD)
        zero_files = [f"table.f{dm['SEQNR']}_TSM" for dm in t.getdminfo().values()
                      if dm["TYPE"] == "TiledColumnStMan" and len(dm["COLUMNS"]) == 1
                      and dm["COLUMNS"][0] in dropped and dm["COLUMNS"][0] in RECOMPUTED_COLUMNS]
    # casacore wrote zeros into the new columns' tiles at close: make them holes again, as the converter
    # leaves them (the same zeros, no disk; CORRECTED_DATA is written by the apply)
    for entry in Path(ms).iterdir():
        if any(entry.name.startswith(prefix) for prefix in zero_files) and entry.is_file():
            size = entry.stat().st_size
            entry.unlink()
            with open(entry, "wb") as fh:
                fh.truncate(size)
    return dropped


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a product (file or tree) to ``dst``, keeping sparse files' holes, fsynced (no verification)."""
    src = Path(src)
    _copy_tree(src, Path(dst), _files(src))
