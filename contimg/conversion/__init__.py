"""Group discovery, UVH5 -> Measurement Set writers, and the MS validation gate."""
