"""Running a (prepared or spiking) model over token windows: the scoring loop and the prefix
KV cache. Below both ``conversion`` (which calibrates with them) and ``evaluation``."""
