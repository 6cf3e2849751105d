"""Online and batch serving: a KServe predictor, a Feast-backed transformer, payload logging, batch scores.

Modules: :mod:`~relearn.serving.config` (settings, no heavy imports), :mod:`~relearn.serving.predictor_model`
and :mod:`~relearn.serving.transformer_model` (the two ``kserve.Model`` classes),
:mod:`~relearn.serving.tensors` (the v2 tensor interface), :mod:`~relearn.serving.payload_log`
(KServe-format CloudEvents through a bounded queue), :mod:`~relearn.serving.metrics`,
:mod:`~relearn.serving.batch` and :mod:`~relearn.serving.local`.
Layer: serving; imports model, monitoring, features, data and the base modules, never rollout,
experiments or the demo (what it shares with them, such as the routing protocol, sits lower).
"""
