"""The DSA-110 data simulator: UVH5 subband groups faithful to the real correlator files.

Public entry points::

    from contimg.simulate import simulate_group, scale_preset, transit_start_time

    group = simulate_group(out_dir, "2026-11-25T08:00:00", **scale_preset("small"))

Conventions (every one is tested in ``tests/test_simulate*.py``; DOMAIN.md 1, 9, 11):

* Files ``<timestamp>_sbNN.hdf5`` written by pyuvdata ``write_uvh5``; sb00 is the
  top of the band, channels descend inside a file (negative channel width).
  Datasets in ~3 MB chunks of whole rows (the correlator's 2-4 MB); flags and
  nsamples lzf-compressed, visibilities not (the real files' filter is not known
  here, DOMAIN.md).
* Meridian fringe-stopped data: integration k is phased to (HA = 0, Dec = pointing
  Dec) in pyuvdata's *apparent* frame (``transform_icrs_to_app``: topocentric
  apparent place of date, equinox-based RA) at its mid time; the phase centre RA is the local apparent sidereal time at the site,
  which is what ``lst_array`` holds.
* ``uvw_array`` is that projection of ``x_ant2 - x_ant1`` (pyuvdata's baseline
  convention), computed exactly as pyuvdata ``calc_uvw(app_ra=lst, app_dec=dec)``.
* Sign: ``V = sum_s S_s PB exp(+2 pi i (u l + v m + w (n - 1)) nu / c)``: the
  convention that pyuvdata's ``phase()`` and CASA's ``ft`` on a pyuvdata-written MS
  use with this uvw (checked against both).
* Gains: ``V_ij = G_i conj(G_j) (V_ij_sky + N_ij)`` with ``G = g(t) B(nu) exp(+2 pi i nu tau)``.
* Noise: ``sigma = SEFD / sqrt(2 dnu tau)`` Jy on each of the real and imaginary
  parts of a cross-correlation (one pol, channel, integration).
"""

from contimg.simulate.corruptions import Corruptions
from contimg.simulate.group import SimulatedGroup, group_cadence_s, simulate_group, transit_start_time
from contimg.simulate.scales import SCALES, scale_preset
from contimg.simulate.sky import FieldOptions, Source

__all__ = [
    "Corruptions",
    "FieldOptions",
    "SCALES",
    "SimulatedGroup",
    "Source",
    "group_cadence_s",
    "scale_preset",
    "simulate_group",
    "transit_start_time",
]
