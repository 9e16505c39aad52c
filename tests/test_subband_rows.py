"""The direct writer's array operations against their plain definitions."""

from __future__ import annotations

import numpy as np

from contimg.conversion.subband_rows import C_M_S, row_weight, w_phasor


def test_row_weight_is_the_median_over_channels():
    rng = np.random.default_rng(0)
    nsamples = np.ones((500, 48, 2), np.float32)
    nsamples[5, 3, 1] = 0.5  # one odd channel
    nsamples[7] = rng.random((48, 2))  # a row with no common value
    nsamples[9] = 0.0  # a flagged stand-in row
    np.testing.assert_array_equal(row_weight(nsamples), np.median(nsamples, axis=1))


def test_w_phasor_equals_the_direct_exponential():
    rng = np.random.default_rng(1)
    delta_w = rng.normal(0, 300, 2000)  # metres: more than any DSA-110 rephasing
    freqs = 1.31e9 + 244_140.625 * np.arange(48)  # DSA-110 channel spacing, Hz
    direct = np.exp(-2j * np.pi * delta_w[:, None] * freqs[None, :] / C_M_S)
    np.testing.assert_allclose(w_phasor(delta_w, freqs), direct, rtol=0, atol=1e-9)
    uneven = np.sort(rng.uniform(1.3e9, 1.5e9, 5))
    np.testing.assert_allclose(w_phasor(delta_w, uneven),
                               np.exp(-2j * np.pi * delta_w[:, None] * uneven[None, :] / C_M_S), atol=1e-12)
