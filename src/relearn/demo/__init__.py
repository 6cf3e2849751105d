"""``make demo``: relearn's whole iterative loop on one machine (see :mod:`relearn.demo.loop`)."""
