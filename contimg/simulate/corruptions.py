"""Instrumental corruptions: delays, bandpasses, gains, thermal noise, RFI, bad antennas.

Every corruption is switchable (:class:`Corruptions`) and recorded in the truth
sidecar with the parameters needed to rebuild it (:func:`antenna_gains`).

Gain convention (CASA's): ``V_ij = G_i conj(G_j) (V_ij_sky + N_ij)`` with, per
antenna a and polarisation p (0 = XX, 1 = YY),

    G[a, p](t, nu) = g[a, p](t) * B[a, p](nu) * exp(+2 pi i nu tau[a, p])

* delay ``tau`` in ns. This convention is the UVH5 file's; the converted MS holds
  the conjugate visibilities (docs/architecture.md), so CASA, whose K Jones is
  ``exp(+2 pi i tau (nu - nu_ref))`` on MS DATA, solves ``conj(G)``: a delay of
  ``-tau`` (``tests/test_calibration.py`` pins this on noise-free data);
* bandpass ``B(nu) = a0 (1 + r cos(2 pi (nu - nu_c)/P + phi_r)) (1 - e x_sb^8)
  exp(i (p0 + p1 x + p2 x^2))`` with ``x = (nu - nu_c)/(B/2)`` across the whole
  band (nu_c 1405 MHz, B 187.5 MHz) and ``x_sb`` the position inside the 11.7 MHz
  subband (a polyphase-filter edge roll-off of depth ``e``);
* slowly varying gain ``g(t) = (1 + ga sin(2 pi t/Ta + psi_a)) exp(i (phi0 +
  gp sin(2 pi t/Tp + psi_p)))`` with t in UNIX seconds, periods 30-120 min.

The instrument parameters depend only on the seed, so consecutive groups of one
run share delays and bandpasses and their gains join smoothly.

Thermal noise (radiometer equation, Thompson, Moran & Swenson ch. 6): with
``SEFD = 2 k Tsys / (eta pi D^2 / 4)`` (11.6 kJy for 50 K, 0.7, 4.65 m), each of the
real and imaginary parts of a cross-correlation gets independent Gaussian noise of
standard deviation ``sigma = SEFD / sqrt(2 dnu tau)`` (4.6 Jy for one native
244 kHz channel, one 12.885 s integration, one polarisation). Autocorrelations are
real: ``SEFD + sum(S PB)`` plus noise of ``(SEFD + sum S PB) / sqrt(dnu tau)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from contimg import instrument
from contimg.radiometer import image_noise_jy, noise_sigma_jy, sefd_jy  # noqa: F401  (the simulator's noise)

BAND_CENTRE_HZ = instrument.BAND_LOW_EDGE_HZ + 0.5 * instrument.N_SUBBANDS * instrument.SUBBAND_WIDTH_HZ
BAND_WIDTH_HZ = instrument.N_SUBBANDS * instrument.SUBBAND_WIDTH_HZ
N_ANTENNAS = 117
N_POLS = 2


@dataclass(frozen=True)
class Corruptions:
    """Which corruptions to inject and how strong (recorded in the truth).

    Attributes
    ----------
    delays : bool
    delay_rms_ns : float
        Standard deviation of per-antenna/pol delays, ns.
    bandpass : bool
    gains : bool
    gain_amp_rms : float
        Typical fractional amplitude variation over time.
    gain_phase_rms_rad : float
        Typical phase variation over time, radians.
    noise : bool
        Thermal noise from the radiometer equation.
    tsys_k, aperture_efficiency : float or None
        Override the settings (``contimg.config.Settings``) for the SEFD.
    rfi : bool
    rfi_channels_per_subband : float
        Mean number of RFI-hit channels per subband (Poisson).
    rfi_amplitude_jy : tuple of float
        Range of RFI amplitudes, Jy.
    dead_antennas : int or tuple of int
        Number of dead antennas (chosen at random among those with data) or
        their antenna numbers. Dead: data zero, flagged.
    flagged_antennas : int or tuple of int
        Same for antennas with normal data that the correlator flagged.
    """

    delays: bool = True
    delay_rms_ns: float = 5.0
    bandpass: bool = True
    gains: bool = True
    gain_amp_rms: float = 0.03
    gain_phase_rms_rad: float = 0.2
    noise: bool = True
    tsys_k: float | None = None
    aperture_efficiency: float | None = None
    rfi: bool = True
    rfi_channels_per_subband: float = 0.5
    rfi_amplitude_jy: tuple[float, float] = (50.0, 500.0)
    dead_antennas: int | tuple[int, ...] = 2
    flagged_antennas: int | tuple[int, ...] = 1

    @classmethod
    def none(cls) -> "Corruptions":
        """No corruption at all: the pure sky."""
        return cls(delays=False, bandpass=False, gains=False, noise=False, rfi=False,
                   dead_antennas=0, flagged_antennas=0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rfi_amplitude_jy"] = list(self.rfi_amplitude_jy)
        for key in ("dead_antennas", "flagged_antennas"):
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d


def settings_sefd(corr: Corruptions) -> tuple[float, float, float]:
    """(SEFD Jy, Tsys K, efficiency) from the corruptions or the pipeline settings."""
    from contimg.config import load_settings

    s = load_settings()
    tsys = s.tsys_k if corr.tsys_k is None else corr.tsys_k
    eta = s.aperture_efficiency if corr.aperture_efficiency is None else corr.aperture_efficiency
    return sefd_jy(tsys_k=tsys, aperture_efficiency=eta), tsys, eta


def draw_instrument(seed: int, corr: Corruptions) -> dict:
    """Per-antenna, per-pol instrument parameters for all 117 antennas (JSON-able).

    Arrays are indexed ``[antenna_number][pol]``; disabled corruptions get their
    neutral values (delay 0, flat unit bandpass, constant unit gain).
    """
    rng = np.random.default_rng([seed, 1])
    shape = (N_ANTENNAS, N_POLS)
    params = {
        "delay_ns": rng.normal(0.0, corr.delay_rms_ns, shape),
        "bp_amp": rng.normal(1.0, 0.05, shape),
        "bp_ripple": rng.uniform(0.01, 0.05, shape),
        "bp_ripple_period_hz": rng.uniform(15e6, 60e6, shape),
        "bp_ripple_phase": rng.uniform(0, 2 * np.pi, shape),
        "bp_edge": rng.uniform(0.1, 0.3, shape),
        "bp_phase0": rng.uniform(-np.pi, np.pi, shape),
        "bp_phase1": rng.normal(0.0, 0.3, shape),
        "bp_phase2": rng.normal(0.0, 0.1, shape),
        "gain_amp": np.abs(rng.normal(0.0, corr.gain_amp_rms, shape)),
        "gain_amp_period_s": rng.uniform(1800, 7200, shape),
        "gain_amp_phase": rng.uniform(0, 2 * np.pi, shape),
        "gain_phase0": rng.uniform(-np.pi, np.pi, shape),
        "gain_phase": np.abs(rng.normal(0.0, corr.gain_phase_rms_rad, shape)),
        "gain_phase_period_s": rng.uniform(1800, 7200, shape),
        "gain_phase_phase": rng.uniform(0, 2 * np.pi, shape),
    }
    if not corr.delays:
        params["delay_ns"] = np.zeros(shape)
    if not corr.bandpass:
        for key in ("bp_ripple", "bp_edge", "bp_phase0", "bp_phase1", "bp_phase2"):
            params[key] = np.zeros(shape)
        params["bp_amp"] = np.ones(shape)
    if not corr.gains:
        for key in ("gain_amp", "gain_phase0", "gain_phase"):
            params[key] = np.zeros(shape)
    params["enabled"] = {"delays": corr.delays, "bandpass": corr.bandpass, "gains": corr.gains}
    return params


def _p(params: dict, key: str, ants: np.ndarray) -> np.ndarray:
    return np.asarray(params[key], dtype=float)[ants]  # (Na, 2)


def bandpass(params: dict, antennas, freqs_hz) -> np.ndarray:
    """Complex bandpass B, shape (Nants, 2, Nfreqs), of the given antenna numbers."""
    ants = np.asarray(antennas, dtype=int)
    nu = np.asarray(freqs_hz, dtype=float)[None, None, :]
    x = (nu - BAND_CENTRE_HZ) / (BAND_WIDTH_HZ / 2)
    sb_index = np.floor((nu - instrument.BAND_LOW_EDGE_HZ) / instrument.SUBBAND_WIDTH_HZ)
    sb_centre = instrument.BAND_LOW_EDGE_HZ + (sb_index + 0.5) * instrument.SUBBAND_WIDTH_HZ
    x_sb = (nu - sb_centre) / (instrument.SUBBAND_WIDTH_HZ / 2)

    def q(key):
        return _p(params, key, ants)[:, :, None]

    amp = q("bp_amp") * (1 + q("bp_ripple") * np.cos(2 * np.pi * (nu - BAND_CENTRE_HZ) / q("bp_ripple_period_hz")
                                                       + q("bp_ripple_phase")))
    amp = amp * (1 - q("bp_edge") * x_sb**8)
    phase = q("bp_phase0") + q("bp_phase1") * x + q("bp_phase2") * x**2
    return amp * np.exp(1j * phase)


def time_gains(params: dict, antennas, unix_s) -> np.ndarray:
    """Slowly varying complex gain g, shape (Nants, 2, Ntimes)."""
    ants = np.asarray(antennas, dtype=int)
    t = np.asarray(unix_s, dtype=float)[None, None, :]

    def q(key):
        return _p(params, key, ants)[:, :, None]

    amp = 1 + q("gain_amp") * np.sin(2 * np.pi * t / q("gain_amp_period_s") + q("gain_amp_phase"))
    phase = q("gain_phase0") + q("gain_phase") * np.sin(2 * np.pi * t / q("gain_phase_period_s") + q("gain_phase_phase"))
    return amp * np.exp(1j * phase)


def delay_phasor(params: dict, antennas, freqs_hz) -> np.ndarray:
    """``exp(+2 pi i nu tau)``, shape (Nants, 2, Nfreqs)."""
    ants = np.asarray(antennas, dtype=int)
    tau_s = _p(params, "delay_ns", ants)[:, :, None] * 1e-9
    return np.exp(2j * np.pi * np.asarray(freqs_hz, dtype=float)[None, None, :] * tau_s)


def antenna_gains(params: dict, antennas, freqs_hz, unix_s) -> np.ndarray:
    """Total antenna gain G, complex128, shape (Nants, Ntimes, Nfreqs, 2)."""
    g = time_gains(params, antennas, unix_s)  # (Na, 2, Nt)
    b = bandpass(params, antennas, freqs_hz) * delay_phasor(params, antennas, freqs_hz)  # (Na, 2, Nf)
    return np.einsum("apt,apf->atfp", g, b)


def choose_bad_antennas(rng: np.random.Generator, antennas, spec, exclude=()) -> list[int]:
    """Antenna numbers for ``dead_antennas``/``flagged_antennas`` (count or explicit)."""
    if isinstance(spec, (tuple, list)):
        return sorted(int(a) for a in spec)
    pool = [a for a in antennas if a not in set(exclude)]
    n = min(int(spec), max(len(pool) - 2, 0))
    return sorted(int(a) for a in rng.choice(pool, size=n, replace=False)) if n else []


def draw_rfi(rng: np.random.Generator, corr: Corruptions, subbands, n_channels: int, n_times: int) -> list[dict]:
    """Narrow-band RFI cells: ``{subband, channel, t_start, t_stop, amplitude_jy, seed}``.

    ``channel`` indexes the file's (descending) channel axis; integrations
    ``t_start <= k < t_stop`` are hit. Not flagged in the file.
    """
    cells = []
    if not corr.rfi:
        return cells
    for sb in subbands:
        for _ in range(rng.poisson(corr.rfi_channels_per_subband)):
            t0 = int(rng.integers(0, n_times))
            cells.append({
                "subband": int(sb),
                "channel": int(rng.integers(0, n_channels)),
                "t_start": t0,
                "t_stop": int(min(n_times, t0 + rng.integers(1, max(2, n_times // 3) + 1))),
                "amplitude_jy": float(rng.uniform(*corr.rfi_amplitude_jy)),
                "seed": int(rng.integers(0, 2**31)),
            })
    return cells


def rfi_voltages(cell: dict, n_ants: int) -> np.ndarray:
    """Per-antenna complex coupling (unit mean power) of one RFI emitter; V_ij += A r_i conj(r_j)."""
    rng = np.random.default_rng(cell["seed"])
    return (rng.normal(size=n_ants) + 1j * rng.normal(size=n_ants)) / np.sqrt(2.0)
