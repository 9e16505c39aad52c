"""Forced photometry: brightness, noise and flags at given sky positions of an image, and its flux scale.

:mod:`contimg.photometry.forced` measures, :mod:`contimg.photometry.fluxscale`
normalises an image against constant reference sources, and
:mod:`contimg.photometry.reference` reads and builds reference lists. Plain
functions on paths and arrays (the catalog side is ``tasks/photometry.py``).
"""
