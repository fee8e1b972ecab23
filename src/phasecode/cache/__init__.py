"""Everything phasecode remembers across processes, on the bottom floor (torch only, no model
stack): the cache root (``root``), the provenance every key holds (``provenance``), digests and
the model fingerprint (``digests``, ``fingerprint``), file locks (``locks``), remembered
measurements (``measurements``), compiled kernels (``kernels``) and the inventory that
``phasecode cache`` shows and bounds (``inventory``)."""
