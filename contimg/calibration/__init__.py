"""Calibration of DSA-110 groups: flagging, a beam-aware model, K/B/G solves, refant ranking, QA, applycal.

Plain functions on MS paths and arrays (no Prefect, no catalog): the registry
that decides which set applies when lives in ``catalog/cal_registry.py``.

* :mod:`.flagging`  reset, zeros/NaN, autocorrelations, subband edges, RFI (AOFlagger or CASA)
* :mod:`.model`     calibrator + catalog sources x spectrum x Airy beam, predicted on the MS geometry
* :mod:`.refant`    reference antennas ranked from the data
* :mod:`.solve`     one function per solve (K, B, G phase + amplitude, optional short phase)
* :mod:`.qa`        table metrics, the QA gate, bandpass plots
* :mod:`.applycal`  apply a set (merging bracketing gain tables), check the result
* :mod:`.pipeline`  :func:`calibrate_ms`: all of the above for one calibrator group
"""
