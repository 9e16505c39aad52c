"""Imaging: the visibilities to grid, the grid, WSClean or tclean, the DSA-110 primary beam, FITS products."""
