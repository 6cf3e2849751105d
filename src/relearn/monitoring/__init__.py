"""Monitoring: the drift detector that sinks KServe's payload logger (runs in the ``drift`` environment).

Modules: :mod:`.settings` (``RELEARN_DRIFT_*``), :mod:`.payloads` (CloudEvents + v1/v2 bodies),
:mod:`.store` (the durable inference log, SQLite WAL with group commit), :mod:`.detector` (alibi-detect
behind a small interface), :mod:`.quality` (delayed labels → precision, recall at budget, PR-AUC),
:mod:`.monitor` (windows, pairing, alerts), :mod:`.served` and :mod:`.comparison` (the rows a backtest
scores and the shadow comparison, for rollouts), :mod:`.report`, :mod:`.alerts`, :mod:`.trigger`,
:mod:`.metrics` and :mod:`.server` (``python -m relearn.monitoring.server``). Nothing is imported here:
no import-time side effects, and alibi-detect (slow import, BSL 1.1) loads only in :mod:`.detector`.
Layer: monitoring, beside :mod:`relearn.model` (the two may import each other); imports features, data
and the base modules, never serving, rollout or the demo; what it imports must stay importable in the
``drift`` environment (numpy<2, no torch).
"""
