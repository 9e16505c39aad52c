"""Mosaics of consecutive group images (:mod:`.linear`)."""
