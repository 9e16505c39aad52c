"""Scale presets: the real size for benchmarks and demos, a tiny one for tests."""

from __future__ import annotations

from contimg import instrument

#: Antennas of the "small" preset: core E-W arm, core N-S arm and outriggers, so
#: that short, medium and the longest (~2.7 km) baselines are all present.
SMALL_ANTENNAS = (0, 1, 5, 23, 50, 51, 60, 101, 102, 105, 110, 116)

#: Antennas of the "medium" preset: every third antenna (39), a snapshot's uv coverage between the small
#: preset's and the full array's (the 12 of "small" leave ~20 % of bright off-centre sources in the
#: residual: benchmarks/RESULTS.md, Variability on a simulated night).
MEDIUM_ANTENNAS = tuple(range(0, 117, 3))

SCALES = {
    "small": {
        "n_subbands": instrument.N_SUBBANDS,
        "n_channels": 4,
        "n_times": 6,
        "antennas": SMALL_ANTENNAS,
    },
    "medium": {
        "n_subbands": instrument.N_SUBBANDS,
        "n_channels": 4,
        "n_times": 6,
        "antennas": MEDIUM_ANTENNAS,
    },
    "full": {
        "n_subbands": instrument.N_SUBBANDS,
        "n_channels": instrument.CHANNELS_PER_SUBBAND,
        "n_times": instrument.INTEGRATIONS_PER_FILE,
        "antennas": None,
    },
}


def scale_preset(name: str) -> dict:
    """Keyword arguments of :func:`contimg.simulate.simulate_group` for a named scale.

    Parameters
    ----------
    name : {"small", "medium", "full"}
        ``small``: 12 antennas (core and outriggers), 4 channels per subband,
        6 integrations, 16 subbands (a group writes in about a second).
        ``medium``: the same with 39 antennas (every third).
        ``full``: the real size, 117 antennas, 48 channels, 24 integrations.

    Returns
    -------
    dict
        ``n_subbands``, ``n_channels``, ``n_times`` and ``antennas``.
    """
    try:
        return dict(SCALES[name])
    except KeyError:
        raise ValueError(f"unknown scale {name!r}; known: {sorted(SCALES)}") from None
