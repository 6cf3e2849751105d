"""``make demo``: relearn's whole iterative loop on one machine (see :mod:`relearn.demo.loop`).

Owns the local stack (processes on loopback: :mod:`.stack`, :mod:`.services`), the simulated world and
its replay, the pipeline runs, the canary and experiment phases and the report (:mod:`.report`).
Layer: the entry points, the top; may import every package. Nothing imports it.
"""
