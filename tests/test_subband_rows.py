"""The direct writer's compiled row pass against the plain definitions of each operation."""

from __future__ import annotations

import numpy as np
import pytest

from contimg.conversion.subband_rows import C_M_S, RowGeometry, ms_rows

XX, YY, XY, YX = -5, -6, -7, -8


def _raw(rng, n_rows, freqs, pols):
    shape = (n_rows, freqs.size, len(pols))
    vis = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    flags = rng.random(shape) < 0.1
    nsamples = np.ones(shape, np.float32)
    nsamples[5, 3, 1] = 0.5  # one odd channel: the median path
    nsamples[7] = rng.random(shape[1:])  # a row with no common value
    nsamples[9] = 0.0  # a flagged stand-in row
    return vis, flags, nsamples


def _reference(vis, flags, nsamples, freqs, pols, g: RowGeometry):
    """Each operation as written in pyuvdata's terms, one numpy step at a time."""
    phasor = np.exp(-2j * np.pi * g.delta_w_m[:, None] * freqs[None, :] / C_M_S)
    vis = vis * phasor[:, :, None]  # w-term rephasing (double precision)
    flags, nsamples = flags.copy(), nsamples.copy()
    conj = np.flatnonzero(g.conjugated)
    vis[conj] = np.conj(vis[conj])  # conjugate to ant1 <= ant2 ...
    if XY in pols and YX in pols:  # ... which swaps XY and YX
        xy, yx = list(pols).index(XY), list(pols).index(YX)
        for array in (vis, flags, nsamples):
            array[conj, :, xy], array[conj, :, yx] = array[conj, :, yx].copy(), array[conj, :, xy].copy()
    chans = np.argsort(freqs, kind="stable")
    order = [g.order[:, None, None], chans[None, :, None], g.pol_order[None, None, :]]
    return {"DATA": np.conj(vis[tuple(order)]), "FLAG": flags[tuple(order)],
            "WEIGHT_SPECTRUM": nsamples[tuple(order)], "WEIGHT": np.median(nsamples[tuple(order)], axis=1)}


@pytest.mark.parametrize("case", ["dsa110", "uneven-channels", "two-pols"])
def test_ms_rows_match_the_plain_definitions(case):
    rng = np.random.default_rng(1)
    n_rows = 600
    if case == "uneven-channels":
        freqs = np.sort(rng.uniform(1.3e9, 1.5e9, 7))[::-1]
    else:  # DSA-110: 48 channels, descending in the file
        freqs = 1.4e9 - 244_140.625 * np.arange(48)
    pols = np.array([XX, YY] if case == "two-pols" else [XX, XY, YX, YY])
    vis, flags, nsamples = _raw(rng, n_rows, freqs, pols)
    casa_order = np.argsort([{XX: 0, XY: 1, YX: 2, YY: 3}[p] for p in pols])
    g = RowGeometry(
        time_jd=np.zeros(n_rows), ant1=np.zeros(n_rows, int), ant2=np.zeros(n_rows, int), pols=pols,
        pol_order=casa_order, delta_w_m=rng.normal(0, 300, n_rows),  # metres: more than any DSA-110 rephasing
        conjugated=rng.random(n_rows) < 0.3, order=rng.permutation(n_rows),
    )
    expected = _reference(vis, flags, nsamples, freqs, pols, g)
    seen = []
    got = ms_rows(vis, flags, nsamples, freqs, pols, g, block_rows=128,
                  on_block=lambda first, last: seen.append((first, last)))
    assert seen == [(0, 128), (128, 256), (256, 384), (384, 512), (512, 600)]
    for name in ("FLAG", "WEIGHT_SPECTRUM", "WEIGHT"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # The phasor runs as a geometric series in double precision: complex64 rounding is all that differs.
    np.testing.assert_allclose(got["DATA"], expected["DATA"], rtol=0, atol=2e-6 * np.abs(vis).max())
    assert got["DATA"].dtype == np.complex64
