"""A/B experiments and bandits on the business metric (issue 19): test in production beyond canaries.

Submodules, imported explicitly (no import-time work here):

* :mod:`~relearn.experiments.assignment`: sticky arm per card (salted hash of ``user_id``);
* :mod:`~relearn.experiments.metrics`: the money view per arm from predictions joined with chargebacks;
* :mod:`~relearn.experiments.sequential`: the always-valid mixture SPRT, its confidence sequence and the
  plan (minimum detectable effect, expected duration) printed at start;
* :mod:`~relearn.experiments.group_sequential`: the alternative with planned looks (alpha spending);
* :mod:`~relearn.experiments.analysis`: daily looks on joined predictions (a fixed window per card);
* :mod:`~relearn.experiments.guardrails`: error rate, p99 latency and score drift limits that stop at once;
* :mod:`~relearn.experiments.result`: the decision, its JSON for the audit trail, MLflow tags, the plot;
* :mod:`~relearn.experiments.bandit`: Thompson sampling over delayed (matured) rewards;
* :mod:`~relearn.experiments.bandit_live`: a bandit's arm shares from the joined history, into the store;
* :mod:`~relearn.experiments.simulate`: many simulated experiments at once, for validity and power;
* :mod:`~relearn.experiments.exporter`: Prometheus metrics per experiment and arm;
* :mod:`~relearn.experiments.versions`: arms are model versions, checked in MLflow at start, tagged after;
* :mod:`~relearn.experiments.routing`: the arm per row (transformer), sent as ``x-relearn-arm`` (router);
* :mod:`~relearn.experiments.store`, :mod:`~relearn.experiments.cli` (its subcommands that act in
  :mod:`~relearn.experiments.subcommands`):
  ``python -m relearn.experiments start|status|stop|list|analyze|update-bandit|promote|simulate`` on a local
  store (also ``kubectl relearn experiment ...``);
* :mod:`~relearn.experiments.kube_store`: the store in the cluster (the ConfigMap the transformers mount)
  and the experiment router's routes checked at start;
* :mod:`~relearn.experiments.promote`: the winner as the canary through :mod:`relearn.rollout.deploy`;
* :mod:`~relearn.experiments.exclusion`: an experiment or a canary over the traffic, never both.

Layer: experiments, beside :mod:`relearn.rollout` (test in production; the two may import each other);
imports serving, model, monitoring, features, data and the base modules, never the demo.
"""
