"""Sky model for drift scans: calibrator catalog, primary beam, transit math.

Modules: ``catalog`` (Calibrator, load_calibrators), ``vla_list`` (VLA list text
parser), ``catalog_build`` (builds the shipped Parquet from the NRAO VLA
calibrator list, with its provenance), ``beam`` (Airy primary
beam), ``pointing`` (pointing Dec and times from UVH5/MS), ``transit`` (transit
time, altitude, time in beam), ``selection`` (candidates, scores, transit groups,
group classification), ``plots`` (altitude / beam-response tracks).
"""

from contimg.sky.catalog import Calibrator, load_calibrators

__all__ = ["Calibrator", "load_calibrators"]
