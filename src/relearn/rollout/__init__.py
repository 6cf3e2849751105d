"""Rollouts: canary and shadow deployments of the fraud model, in a cluster (KServe + Istio) or locally.

:mod:`relearn.rollout.backend` holds the backend interface, :mod:`relearn.rollout.kubernetes_backend`
the Kubernetes backend, :mod:`relearn.rollout.router` the local router and its backend,
:mod:`relearn.rollout.cli` the ``kubectl relearn`` plugin and :mod:`relearn.rollout.analysis` the canary
analysis decisions.
Layer: rollout, beside :mod:`relearn.experiments` (test in production; the two may import each other);
imports serving, model, monitoring, features, data and the base modules, never the demo.
"""
