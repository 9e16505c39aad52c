"""A point source with a power-law spectrum: what the simulator injects and the calibration model predicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Reference frequency of catalog fluxes (the VLA list's 20 cm band), Hz.
REFERENCE_FREQ_HZ = 1.4e9


@dataclass(frozen=True)
class Source:
    """A point source.

    Attributes
    ----------
    name : str
    ra_deg, dec_deg : float
        ICRS position, degrees.
    flux_jy : float
        Stokes I flux density at ``ref_freq_hz``, Jy (XX = YY = I).
    spectral_index : float
        alpha in S ~ nu**alpha.
    ref_freq_hz : float
    kind : str
        ``calibrator`` or ``field``.
    """

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float = 0.0
    ref_freq_hz: float = REFERENCE_FREQ_HZ
    kind: str = "field"

    def flux_at(self, freq_hz) -> np.ndarray:
        """Flux density at ``freq_hz`` (Hz), Jy."""
        return self.flux_jy * (np.asarray(freq_hz, dtype=float) / self.ref_freq_hz) ** self.spectral_index

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_calibrator(cls, cal) -> "Source":
        """A :class:`contimg.sky.catalog.Calibrator` (its 1.4 GHz flux and spectral index;
        a missing index is flat, as in :meth:`~contimg.sky.catalog.Calibrator.flux_at`)."""
        alpha = 0.0 if cal.spectral_index is None else float(cal.spectral_index)
        return cls(cal.name, float(cal.ra_deg), float(cal.dec_deg), float(cal.flux_jy), alpha,
                   REFERENCE_FREQ_HZ, "calibrator")
