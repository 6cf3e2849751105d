"""The fraud model: network and artifact (net), training, evaluation, report, registry and promotion gate.

Submodules are imported explicitly (``from relearn.model.net import score``) so that a serving process
loading a model does not pay for scikit-learn, matplotlib or MLflow imports it does not need.
Layer: model, beside :mod:`relearn.monitoring` (the two may import each other); imports
:mod:`relearn.features`, :mod:`relearn.data` and the base modules, never serving, rollout or the demo.
"""
