"""Flag a Measurement Set for the calibration solves, and summarise its flags.

:func:`flag_for_calibration` runs, in order:

``reset``
    Back to the flags *as converted*. The converter writes FLAG from the UVH5
    flags, which mark the antennas the correlator flagged or found dead (and
    missing subbands): those must never be un-flagged. The first call on an MS
    saves its FLAG and FLAG_ROW as the CASA flag version ``contimg_converted``
    (``<ms>.flagversions``, written with python-casacore in CASA ``flagmanager``'s
    layout, so ``flagmanager(mode='restore')`` can also bring it back by hand);
    every call then restores that version (no CASA process either way). A
    plain ``flagdata(mode='unflag')`` would lose the correlator's flags.
``clip``
    Zeros, NaN and inf in DATA (what ``flagdata(mode='clip', clipzeros=True)``
    flags), per visibility and polarisation.
``autocorr``
    Autocorrelations (``autocorr=True``), which the solves must not use.
``edge``
    ``edge_channels`` channels at each end of every SPW (one SPW = one subband):
    ``spw='*:0~{n-1};{N-n}~{N-1}'``.
``rfi``
    AOFlagger (the ``aoflagger`` wheel's Python API and the strategy
    ``contimg/data/aoflagger/dsa110.lua``), one call per baseline on one real
    image, ``|XX| + |YY|``, with all SPWs side by side in ascending frequency
    (24 x 768 samples at full size); its flags are OR-ed into FLAG, in both
    polarisations. The amplitude sum, not each polarisation: half the work, and
    unpolarised RFI adds coherently while the noise does not (amplitudes, not the
    complex sum, so RFI cannot cancel between polarisations of different
    uncalibrated phase); RFI in one polarisation only is found at 1/sqrt(2) of
    the single-polarisation significance. The images are built in compiled code
    per chunk of baselines; the binding holds the GIL, so chunks are sent to
    worker processes (``workers``), started (spawned) before DATA is read
    (:func:`rfi_pool`, :mod:`.rfi_worker`).
    CASA ``tfcrop`` then ``rflag`` (DOMAIN.md 5.1 parameters) is the fallback,
    used with ``rfi_backend="casa"`` or when ``"auto"`` cannot import aoflagger.

The deterministic steps (reset, clip, autocorr, edge) are numpy on the FLAG
column read once with python-casacore: exactly the flags CASA's ``flagdata``
would set, without a CASA process per step. FLAG is written back in row chunks
(``putcol``), and FLAG_ROW is set where a whole row is flagged. DATA is never
written.

Fractions (0..1) count visibilities x polarisations. ``flagged_fraction`` of a
step is over all rows (so the ``autocorr`` step shows its share); ``per_antenna``
and ``per_spw`` are over cross-correlations only (what the solves use). The
``reset`` step's ``added_fraction`` is the converter's (correlator's) share.
``delivered_flagged_fraction`` is what the data themselves made us flag: of the
cross-correlations outside the edge channels that the correlator delivered
unflagged, the fraction flagged at the end (zeros, NaN, RFI). The autocorrelations
and edge channels are flagged whatever the data (the edges are half the band of a
4-channel test group), and the correlator's flags are the instrument's state, so
neither says how bad this group's data are.

Measured against the simulator's RFI truth (``tests/test_flagging.py``): on a
12-antenna group, 97 % of the RFI-hit visibilities flagged, 100 % of those
above 5 sigma; 0.2 % of clean data flagged. On a full group (117 antennas, 48
channels, 24 integrations; 2.65 M rows, DATA 2 GB; benchmarks/RESULTS.md),
AOFlagger on the polarisation sum, first SumThreshold pass along frequency only:
17 CPU-s in the workers (2.5 ms per baseline, of which 0.1 ms building the image)
and ~2 in the parent, recall 96.4 % of the RFI-hit visibilities (98.8 % above 3
sigma, 99.9 % above 5 sigma, 100 % above 10), 0.35 % of clean visibilities
flagged; the previous XX-and-YY strategy with two full SumThreshold passes took
52 CPU-s for recall 96.1 % and the same 0.35 % false flags.
CASA tfcrop + rflag took 376 s on the same group (recall 98.3 %, 0.4 % false
flags, scored by an earlier version of the truth comparison).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numba
import numpy as np

from contimg.calibration import rfi_worker
from contimg.casa import run_in_casa
from contimg.errors import ContimgError, InvalidInputError

CONVERTED_FLAG_VERSION = "contimg_converted"
"""Name of the flag version that holds the converter's flags (the reset baseline)."""

RFI_BACKENDS = ("auto", "aoflagger", "casa")

CASA_RFI_PARAMS = {
    "tfcrop": dict(mode="tfcrop", timecutoff=4.0, freqcutoff=4.0, extendflags=False),
    "rflag": dict(mode="rflag", timedevscale=4.0, freqdevscale=4.0, extendflags=False),
}
"""CASA fallback parameters (DOMAIN.md 5.1, the telescope team's values)."""

_CHUNK_ROWS = 32768
#: Seconds the parent waits for one chunk's AOFlagger flags from a worker (a full group's chunks take
#: seconds): a worker that died loses its task, and the pool would wait for it for ever.
RFI_CHUNK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class FlagReport:
    """What :func:`flag_for_calibration` did.

    Attributes
    ----------
    steps : list of dict
        One per step, in order: ``{"step", "flagged_fraction"`` (cumulative after
        the step, all rows, 0..1), ``"added_fraction"``, ``"seconds"}``.
    per_antenna : dict of int to float
        Final flagged fraction per antenna number (cross-correlations), 0..1.
    per_spw : dict of int to float
        Final flagged fraction per SPW (cross-correlations), 0..1.
    rfi_backend : str
        ``"aoflagger"``, ``"casa"`` or ``"none"``.
    delivered_flagged_fraction : float
        Of the cross-correlation visibilities outside the edge channels that were
        unflagged as converted, the fraction flagged at the end, 0..1 (1 when the
        correlator delivered none); NaN when not measured.
    """

    steps: list[dict]
    per_antenna: dict[int, float]
    per_spw: dict[int, float]
    rfi_backend: str
    delivered_flagged_fraction: float = float("nan")

    @property
    def flagged_fraction(self) -> float:
        """Final flagged fraction over all rows (0 if no step ran)."""
        return self.steps[-1]["flagged_fraction"] if self.steps else 0.0

    def to_dict(self) -> dict:
        """Plain Python types (JSON-serialisable; antenna and SPW keys stay ints)."""
        out = asdict(self)
        out["flagged_fraction"] = self.flagged_fraction
        return out


# --------------------------------------------------------------------------- input


def _open_checked(ms) -> Path:
    """The MS path, after checking python-casacore can read its FLAG and DATA."""
    from casacore.tables import table

    path = Path(ms)
    if not path.is_dir():
        raise InvalidInputError(
            f"{path}: no Measurement Set there (not a directory). Check the path, or convert the group first."
        )
    try:
        with table(str(path), ack=False) as tab:
            missing = [c for c in ("FLAG", "DATA", "ANTENNA1", "ANTENNA2", "DATA_DESC_ID", "TIME")
                       if c not in tab.colnames()]
            n_rows = tab.nrows()
    except RuntimeError as exc:
        raise InvalidInputError(
            f"{path}: not a readable Measurement Set ({exc}). Reconvert the group from its subband files."
        ) from exc
    if missing:
        raise InvalidInputError(f"{path}: the main table lacks {', '.join(missing)}. Reconvert the group.")
    if n_rows == 0:
        raise InvalidInputError(f"{path}: the Measurement Set has no rows. Reconvert the group.")
    return path


@dataclass(frozen=True)
class _Layout:
    ant1: np.ndarray
    ant2: np.ndarray
    spw: np.ndarray  # per row
    time_index: np.ndarray  # per row, 0..n_times-1 (sorted unique TIME)
    n_times: int
    spw_order: np.ndarray  # SPW ids in ascending frequency


def _layout(tab, ms: Path) -> _Layout:
    from casacore.tables import table

    ant1 = tab.getcol("ANTENNA1")
    ant2 = tab.getcol("ANTENNA2")
    ddid = tab.getcol("DATA_DESC_ID")
    times = tab.getcol("TIME")
    with table(str(ms / "DATA_DESCRIPTION"), ack=False) as dd:
        dd_spw = dd.getcol("SPECTRAL_WINDOW_ID")
    with table(str(ms / "SPECTRAL_WINDOW"), ack=False) as sw:
        first_freq = np.array([np.asarray(f).ravel()[0] for f in sw.getcol("CHAN_FREQ")])
    unique_t, t_index = np.unique(times, return_inverse=True)
    return _Layout(ant1, ant2, np.asarray(dd_spw)[ddid], t_index.ravel(), len(unique_t),
                   np.argsort(first_freq, kind="stable"))


def _fractions(flags: np.ndarray, lay: _Layout) -> tuple[dict[int, float], dict[int, float]]:
    """Per-antenna and per-SPW flagged fractions over cross-correlations."""
    per_row = flags.reshape(len(flags), -1).sum(axis=1, dtype=np.int64)
    size = flags[0].size
    cross = lay.ant1 != lay.ant2
    n_ant = int(max(lay.ant1.max(), lay.ant2.max())) + 1
    counts = np.bincount(lay.ant1[cross], weights=per_row[cross], minlength=n_ant) \
        + np.bincount(lay.ant2[cross], weights=per_row[cross], minlength=n_ant)
    rows = np.bincount(lay.ant1[cross], minlength=n_ant) + np.bincount(lay.ant2[cross], minlength=n_ant)
    per_antenna = {int(a): float(counts[a] / (rows[a] * size)) for a in np.flatnonzero(rows)}
    n_spw = int(lay.spw.max()) + 1
    s_counts = np.bincount(lay.spw[cross], weights=per_row[cross], minlength=n_spw)
    s_rows = np.bincount(lay.spw[cross], minlength=n_spw)
    per_spw = {int(s): float(s_counts[s] / (s_rows[s] * size)) for s in np.flatnonzero(s_rows)}
    return per_antenna, per_spw


def flag_summary(ms) -> dict:
    """Flagged fractions of an MS, read with python-casacore (no CASA process).

    Parameters
    ----------
    ms : path-like
        The Measurement Set.

    Returns
    -------
    dict
        ``flagged_fraction`` (all rows), ``cross_flagged_fraction``
        (cross-correlations), ``per_antenna`` {antenna number: fraction} and
        ``per_spw`` {SPW: fraction} over cross-correlations, ``n_rows``. Fractions
        count visibilities x polarisations, 0..1.

    Raises
    ------
    InvalidInputError
        The MS is missing or unreadable.
    """
    from casacore.tables import table

    path = _open_checked(ms)
    with table(str(path), ack=False) as tab:
        lay = _layout(tab, path)
        flags = tab.getcol("FLAG")
    per_antenna, per_spw = _fractions(flags, lay)
    cross = lay.ant1 != lay.ant2
    return {
        "ms": str(path),
        "n_rows": int(len(flags)),
        "flagged_fraction": float(flags.mean()),
        "cross_flagged_fraction": float(flags[cross].mean()) if cross.any() else 0.0,
        "per_antenna": per_antenna,
        "per_spw": per_spw,
    }


# --------------------------------------------------------------------------- reset


def _delivered_flagged_fraction(ms: Path, flags: np.ndarray, lay: _Layout, edge_channels: int) -> float:
    """Of the cross-correlations outside the edge channels unflagged as converted, the fraction ``flags`` flags.

    The converted flags are read back from the saved version in row chunks: keeping
    a copy in memory through the RFI step would cost 0.25 GB on a full group.
    """
    from casacore.tables import table

    cross = lay.ant1 != lay.ant2
    inner = slice(edge_channels, flags.shape[1] - edge_channels)
    delivered = flagged = 0
    with table(str(_version_dir(ms)), ack=False) as tab:
        for start in range(0, len(flags), _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, len(flags))
            rows = cross[start:stop]
            good = ~tab.getcol("FLAG", start, stop - start)[rows][:, inner]
            delivered += np.count_nonzero(good)
            flagged += np.count_nonzero(flags[start:stop][rows][:, inner] & good)
    return flagged / delivered if delivered else 1.0


def _version_dir(ms: Path) -> Path:
    return ms.with_name(ms.name + ".flagversions") / f"flags.{CONVERTED_FLAG_VERSION}"


_VERSION_COMMENT = "flags as converted (correlator flags); contimg reset baseline"


def save_converted_flags(ms, *, log_dir=None) -> Path:
    """Save the MS's current flags as the ``contimg_converted`` version, once.

    Does nothing if the version exists. Call it (or :func:`flag_for_calibration`,
    which does) before anything else flags the MS: the saved flags are what
    ``reset`` returns to.

    The version is written with python-casacore in CASA ``flagmanager``'s layout
    (``<ms>.flagversions/flags.<name>``: FLAG in a tiled column, FLAG_ROW; a
    ``name : comment`` line in ``FLAG_VERSION_LIST``), so ``flagmanager`` lists and
    restores it (``tests/test_flagging.py`` checks that); a CASA child process to
    save it cost ~7 s of start-up per group.

    Parameters
    ----------
    ms : path-like
    log_dir : path-like, optional
        Unused (the save needs no CASA process); kept for callers.

    Returns
    -------
    Path
        The flag version's table.
    """
    from casacore.tables import makearrcoldesc, makescacoldesc, maketabdesc, table

    ms = Path(ms)
    version = _version_dir(ms)
    if version.exists():
        return version
    version.parent.mkdir(exist_ok=True)
    partial = version.with_name(version.name + ".partial")  # renamed when complete: no half-written version
    if partial.exists():
        import shutil

        shutil.rmtree(partial)
    with table(str(ms), ack=False) as main:
        n_rows = main.nrows()
        cell = main.getcell("FLAG", 0).shape  # (chan, pol); casacore's (pol, chan)
        tile_rows = max(1, (8 * 1024 * 1024) // (cell[0] * cell[1]))  # 1 MiB of bits per tile, as CASA
        desc = maketabdesc([makearrcoldesc("FLAG", False, ndim=2, valuetype="boolean",
                                           datamanagertype="TiledShapeStMan", datamanagergroup="TiledFlag"),
                            makescacoldesc("FLAG_ROW", False)])
        dminfo = {"*1": {"TYPE": "TiledShapeStMan", "NAME": "TiledFlag", "COLUMNS": ["FLAG"],
                         "SPEC": {"DEFAULTTILESHAPE": np.array([cell[1], cell[0], tile_rows], dtype=np.int32)}},
                  "*2": {"TYPE": "StandardStMan", "NAME": "StandardStMan", "COLUMNS": ["FLAG_ROW"], "SPEC": {}}}
        with table(str(partial), desc, nrow=n_rows, dminfo=dminfo, ack=False) as out:
            for start in range(0, n_rows, _CHUNK_ROWS):
                n = min(_CHUNK_ROWS, n_rows - start)
                out.putcol("FLAG", main.getcol("FLAG", start, n), startrow=start, nrow=n)
                out.putcol("FLAG_ROW", main.getcol("FLAG_ROW", start, n), startrow=start, nrow=n)
    partial.rename(version)
    listing = version.parent / "FLAG_VERSION_LIST"
    lines = [ln for ln in (listing.read_text().splitlines() if listing.exists() else [])
             if ln.split(" : ")[0].strip() != CONVERTED_FLAG_VERSION]
    listing.write_text("".join(f"{ln}\n" for ln in lines + [f"{CONVERTED_FLAG_VERSION} : {_VERSION_COMMENT}"]))
    return version


def _converted_flags(ms: Path, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    from casacore.tables import table

    version = _version_dir(ms)
    with table(str(version), ack=False) as tab:
        if tab.nrows() != n_rows:
            raise InvalidInputError(
                f"{ms}: the saved flag version {version.name} has {tab.nrows()} rows, the MS {n_rows}; "
                f"the MS changed since it was converted. Delete {version.parent} and reconvert the group."
            )
        return tab.getcol("FLAG"), tab.getcol("FLAG_ROW")


# --------------------------------------------------------------------------- RFI


def default_strategy() -> Path:
    """The repository's AOFlagger strategy for DSA-110."""
    return Path(str(resources.files("contimg.data").joinpath("aoflagger/dsa110.lua")))


def aoflagger_available() -> bool:
    """True if the ``aoflagger`` Python module imports."""
    try:
        import aoflagger  # noqa: F401
    except ImportError:
        return False
    return True


def _baseline_index(lay: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers as ``index[baseline, time, spw position]`` (-1: no row), and baselines (ant1, ant2).

    Cross-correlations only; SPW positions in ascending frequency.
    """
    cross = np.flatnonzero(lay.ant1 != lay.ant2)
    n_ant = int(max(lay.ant1.max(), lay.ant2.max())) + 1
    keys, bl = np.unique(lay.ant1[cross].astype(np.int64) * n_ant + lay.ant2[cross], return_inverse=True)
    pairs = np.stack([keys // n_ant, keys % n_ant], axis=1)
    n_pos = len(lay.spw_order)
    pos_of_spw = np.empty(n_pos, dtype=np.int64)
    pos_of_spw[lay.spw_order] = np.arange(n_pos)
    index = np.full((len(pairs), lay.n_times, n_pos), -1, dtype=np.int64)
    index[bl.ravel(), lay.time_index[cross], pos_of_spw[lay.spw[cross]]] = cross
    return index, pairs


@numba.njit(cache=True, nogil=True)
def _amp_sum_images(data, flags, rows, amp, mask):  # pragma: no cover - compiled
    """Per baseline, the (freq, time) image of |XX| + |YY| and its mask (a sample flagged in any pol).

    ``rows[bl, t, pos]`` is the MS row (-1: none, masked); frequency runs over SPW
    positions then channels. Flagged samples are 0 (the strategy ignores them).
    """
    n_bl, n_t, n_pos = rows.shape
    n_chan, n_pol = data.shape[1], data.shape[2]
    for b in range(n_bl):
        for t in range(n_t):
            for p in range(n_pos):
                r = rows[b, t, p]
                for c in range(n_chan):
                    fi = p * n_chan + c
                    masked = r < 0
                    a = 0.0
                    if not masked:
                        for q in range(n_pol):
                            masked = masked or flags[r, c, q]
                            v = data[r, c, q]
                            a += np.sqrt(v.real * v.real + v.imag * v.imag)
                    mask[b, fi, t] = masked
                    amp[b, fi, t] = 0.0 if masked else a


def _chunk_images(data: np.ndarray, flags: np.ndarray, rows: np.ndarray, pol_sum: bool) -> tuple[list, np.ndarray]:
    """The strategy's input for baselines ``rows`` (bl, time, spw position): images and masks, (bl, freq, time).

    float32 images: AOFlagger holds its images in single precision, so these are
    the very values the binding would make of float64 ones (half the bytes sent to
    a worker).
    """
    n_bl, n_t, n_pos = rows.shape
    n_chan = data.shape[1]
    n_freq = n_pos * n_chan
    if pol_sum:
        amp = np.empty((n_bl, n_freq, n_t), dtype=np.float32)  # the kernel rounds its float64 sums to it
        masks = np.empty((n_bl, n_freq, n_t), dtype=bool)
        _amp_sum_images(data, flags, rows, amp, masks)
        return [amp], masks
    present = rows >= 0
    safe = np.where(present, rows, 0)
    f = flags[safe] | ~present[..., None, None]  # (bl, t, pos, chan, pol)
    masks = np.ascontiguousarray(f.any(axis=-1).reshape(n_bl, n_t, n_freq).transpose(0, 2, 1))
    v = data[safe]
    v[f] = 0
    v = v.reshape(n_bl, n_t, n_freq, 2).transpose(3, 0, 2, 1)  # (pol, bl, freq, time)
    images = []
    for p in range(2):
        images += [np.ascontiguousarray(v[p].real, dtype=np.float32), np.ascontiguousarray(v[p].imag, dtype=np.float32)]
    return images, masks


def rfi_pool(workers: int | None = None):
    """Processes for the AOFlagger strategy (its binding holds the GIL), started now; None for one worker.

    Spawned, not forked. A fork copies the parent's memory map and its threads' locks:
    forked from a process holding the 2 GB DATA column, each worker counted it again in
    its resident memory (the stage's measured peak was 7.6 GB, 4.6 GB of it the two
    workers; issue 21); and a fork of a process with threads (Prefect's clients, a test
    run's servers) can inherit a lock mid-use (a forked simulator worker crashed with a
    segmentation fault in CI). Spawned workers hold only what :mod:`.rfi_worker` imports
    and get each chunk's images from the parent. Make the pool before DATA is read all
    the same (the start, ~1 s, overlaps the read). Close it (``with``) when done.
    """
    n = workers if workers is not None else min(2, os.cpu_count() or 1)
    if n <= 1:
        return None
    # SIGTERM blocked from the start until the worker's initializer has reset its action
    # (:func:`.rfi_worker.reset_signals`; the mask survives exec): one sent in between (a stage
    # that fails at once and terminates the pool) stays pending instead of reaching a handler the
    # worker's imports installed. The pool's own threads, made here, inherit the mask, so workers
    # it starts later start blocked too.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return multiprocessing.get_context("spawn").Pool(n, initializer=rfi_worker.reset_signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def aoflagger_flags(data: np.ndarray, flags: np.ndarray, lay: _Layout, strategy: Path,
                    *, workers: int = 1, chunk: int = 128, pol_sum: bool = True, pool=None) -> np.ndarray:
    """AOFlagger's flags for every cross-correlation row (input flags included).

    Parameters
    ----------
    data : ndarray, complex, (row, channel, 2)
        DATA (XX, YY).
    flags : ndarray, bool, same shape
        Flags so far; flagged samples are excluded from the statistics and stay flagged.
    lay : _Layout
        Row metadata.
    strategy : path
        Lua strategy file.
    workers : int
        Processes running the strategy (its Python binding holds the GIL), started
        here unless ``pool`` is given; 1 runs it in this process. The images are
        built here, chunk by chunk as the workers take them (a few chunks of ~12 MB
        in flight).
    chunk : int
        Baselines per task.
    pol_sum : bool
        Run the strategy once per baseline on ``|XX| + |YY|`` (default) instead of
        on XX and YY as two complex polarisations (twice the work).
    pool : multiprocessing.pool.Pool, optional
        Workers made before DATA was read (:func:`rfi_pool`).

    Returns
    -------
    ndarray of bool, same shape as ``flags``
        ``flags`` OR the strategy's flags (a sample flagged by the strategy is
        flagged in both polarisations).
    """
    if data.shape[-1] != 2:
        raise InvalidInputError(f"the AOFlagger step expects 2 polarisations (XX, YY), got {data.shape[-1]}")
    index, _ = _baseline_index(lay)
    n_bl, n_t, n_pos = index.shape
    n_chan = data.shape[1]
    bounds = [(b, min(b + chunk, n_bl)) for b in range(0, n_bl, chunk)]

    def tasks():
        for b0, b1 in bounds:
            images, masks = _chunk_images(data, flags, index[b0:b1], pol_sum)
            yield str(strategy), images, masks, n_t, n_pos, n_chan

    out = flags.copy()

    def merge(b0, b1, bits):
        new = np.unpackbits(bits, count=(b1 - b0) * n_t * n_pos * n_chan).astype(bool)
        new = new.reshape(b1 - b0, n_t, n_pos, n_chan)
        rows = index[b0:b1]
        sel = (rows >= 0) & new.any(axis=-1)
        if sel.any():
            out[rows[sel]] |= new[sel][..., None]

    if pool is not None or (workers > 1 and len(bounds) > 1):
        own = rfi_pool(workers) if pool is None else None
        try:
            results = (pool or own).imap(rfi_worker.run_task, tasks())
            for b0, b1 in bounds:
                try:
                    bits = results.next(timeout=RFI_CHUNK_TIMEOUT_S)
                except multiprocessing.TimeoutError:
                    raise RuntimeError(
                        f"AOFlagger: no result for baselines {b0}-{b1} within {RFI_CHUNK_TIMEOUT_S:.0f} s (an RFI "
                        "worker died or hung); FLAG is not written, rerun the step") from None
                merge(b0, b1, bits)
        finally:
            if own is not None:
                own.terminate()
    else:
        for (b0, b1), task in zip(bounds, tasks()):
            merge(b0, b1, rfi_worker.run_strategy(*task))
    return out


def _casa_rfi(ms: str) -> dict:
    """Child side: CASA tfcrop then rflag on DATA (flag backups off)."""
    from casatasks import flagdata

    for params in CASA_RFI_PARAMS.values():
        flagdata(vis=ms, datacolumn="data", flagbackup=False, action="apply", **params)
    return {}


# --------------------------------------------------------------------------- driver


def _put_flags(tab, flags: np.ndarray) -> None:
    for start in range(0, len(flags), _CHUNK_ROWS):
        chunk = flags[start:start + _CHUNK_ROWS]
        tab.putcol("FLAG", chunk, startrow=start, nrow=len(chunk))
        tab.putcol("FLAG_ROW", chunk.reshape(len(chunk), -1).all(axis=1), startrow=start, nrow=len(chunk))


def _resolve_backend(rfi: bool, rfi_backend: str) -> str:
    if rfi_backend not in RFI_BACKENDS:
        raise ValueError(f"rfi_backend must be one of {RFI_BACKENDS}, got {rfi_backend!r}")
    if not rfi:
        return "none"
    if rfi_backend == "auto":
        return "aoflagger" if aoflagger_available() else "casa"
    if rfi_backend == "aoflagger" and not aoflagger_available():
        raise ContimgError(
            "rfi_backend='aoflagger' but the aoflagger module does not import: install it "
            "(pip install 'aoflagger>=3.4') or use rfi_backend='casa'."
        )
    return rfi_backend


def flag_for_calibration(
    ms,
    *,
    log_dir,
    edge_channels: int = 1,
    rfi: bool = True,
    rfi_backend: str = "auto",
    strategy=None,
    autocorr: bool = True,
    workers: int | None = None,
    data: np.ndarray | None = None,
    pool=None,
) -> FlagReport:
    """Flag an MS for the calibration solves: reset, clip, autocorr, edge, RFI.

    Parameters
    ----------
    ms : path-like
        The Measurement Set (FLAG and FLAG_ROW are rewritten; DATA is untouched).
    log_dir : path-like
        Directory for the CASA logs of this call (``flag_*.casa.log``).
    edge_channels : int
        Channels flagged at each end of every SPW (subband); 0 for none.
    rfi : bool
        Run the RFI step.
    rfi_backend : {"auto", "aoflagger", "casa"}
        ``auto``: AOFlagger if the module imports, else CASA tfcrop + rflag.
    strategy : path-like, optional
        AOFlagger Lua strategy (default :func:`default_strategy`). Ignored by CASA.
    autocorr : bool
        Flag autocorrelations.
    workers : int, optional
        Processes running the AOFlagger strategy (default: up to 2, the CPUs).
    data : numpy.ndarray, optional
        The MS's DATA column (rows, channels, polarisations), complex, if the
        caller has read it already: :func:`contimg.calibration.pipeline.calibrate_ms`
        shares one read of the 2 GB column between flagging and the solves.
        Read here otherwise.
    pool : multiprocessing.pool.Pool, optional
        AOFlagger workers (:func:`rfi_pool`) made by a caller that holds ``data``
        already, before it read it; otherwise made here, before DATA is read.

    Returns
    -------
    FlagReport

    Raises
    ------
    InvalidInputError
        The MS is missing or unreadable, or ``edge_channels`` leaves no channel.
    CasaError
        A CASA child (flag-version save, CASA RFI fallback) failed.
    """
    from casacore.tables import table

    backend = _resolve_backend(rfi, rfi_backend)
    path = _open_checked(ms)
    if edge_channels < 0:
        raise ValueError(f"edge_channels must be >= 0, got {edge_channels}")
    strategy_path = Path(strategy) if strategy is not None else default_strategy()
    if backend == "aoflagger" and not strategy_path.is_file():
        raise InvalidInputError(f"AOFlagger strategy {strategy_path} does not exist; pass an existing .lua file.")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)

    steps: list[dict] = []
    state = {"fraction": 0.0, "t0": time.perf_counter()}

    def record(name: str, flags: np.ndarray) -> None:
        now = time.perf_counter()
        frac = float(flags.mean())
        steps.append({"step": name, "flagged_fraction": frac,
                      "added_fraction": max(frac - state["fraction"], 0.0) if steps else frac,
                      "seconds": now - state["t0"]})
        state["fraction"], state["t0"] = frac, time.perf_counter()

    with table(str(path), ack=False) as tab:
        n_chan = tab.getcell("FLAG", 0).shape[0]
    if 2 * edge_channels >= n_chan:
        raise InvalidInputError(
            f"{path}: edge_channels={edge_channels} would flag all {n_chan} channels of every SPW; "
            "use fewer edge channels."
        )

    save_converted_flags(path, log_dir=log_dir)  # first call only; its time counts in "reset"
    own_pool = None
    if backend == "aoflagger" and pool is None:
        own_pool = pool = rfi_pool(workers)  # started before DATA is read
    try:
        return _flag(path, backend=backend, data=data, pool=pool, steps=steps, record=record, autocorr=autocorr,
                     edge_channels=edge_channels, n_chan=n_chan, strategy_path=strategy_path, log_dir=log_dir)
    finally:
        if own_pool is not None:
            own_pool.terminate()


def _flag(path, *, backend, data, pool, steps, record, autocorr, edge_channels, n_chan, strategy_path,
          log_dir) -> FlagReport:
    """:func:`flag_for_calibration` after its checks."""
    from casacore.tables import table

    with table(str(path), ack=False, readonly=False) as tab:
        lay = _layout(tab, path)
        n_rows = tab.nrows()
        # reset: back to the flags as converted (the correlator's flags stay)
        flags, _ = _converted_flags(path, n_rows)
        flags = np.array(flags, dtype=bool, copy=True)
        record("reset", flags)
        # clip: zeros, NaN, inf (DATA, which the AOFlagger step reuses)
        if data is None:
            data = tab.getcol("DATA")
        elif data.shape != flags.shape:
            raise ValueError(f"data has shape {data.shape}, the MS's DATA {flags.shape}")
        for begin in range(0, n_rows, _CHUNK_ROWS):  # by chunks: no full-size temporaries
            d = data[begin:begin + _CHUNK_ROWS]
            flags[begin:begin + _CHUNK_ROWS] |= ~np.isfinite(d) | (d == 0)
        record("clip", flags)
        if autocorr:
            flags[lay.ant1 == lay.ant2] = True
            record("autocorr", flags)
        if edge_channels:
            flags[:, :edge_channels] = True
            flags[:, n_chan - edge_channels:] = True
        if backend != "aoflagger":
            _put_flags(tab, flags)  # the CASA child reads FLAG from disk
        if edge_channels:
            record("edge", flags)
        if backend == "aoflagger":
            flags = aoflagger_flags(data, flags, lay, strategy_path, workers=1, pool=pool)
            _put_flags(tab, flags)
            record("rfi", flags)
        del data
    if backend == "casa":
        run_in_casa(_casa_rfi, str(path), log_path=log_dir / "flag_rfi_casa.casa.log")
        with table(str(path), ack=False, readonly=False) as tab:
            flags = tab.getcol("FLAG")
            _put_flags(tab, flags)  # FLAG_ROW consistent with FLAG
        record("rfi", flags)
    per_antenna, per_spw = _fractions(flags, lay)
    return FlagReport(steps=steps, per_antenna=per_antenna, per_spw=per_spw, rfi_backend=backend,
                      delivered_flagged_fraction=_delivered_flagged_fraction(path, flags, lay, edge_channels))
