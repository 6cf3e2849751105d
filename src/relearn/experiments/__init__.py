"""A/B experiments and bandits on the business metric (issue 19): test in production beyond canaries.

Submodules, imported explicitly (no import-time work here):

* :mod:`~relearn.experiments.assignment`: sticky arm per card (salted hash of ``user_id``);
* :mod:`~relearn.experiments.metrics`: the money view per arm from predictions joined with chargebacks;
* :mod:`~relearn.experiments.sequential`: the always-valid mixture SPRT, its confidence sequence and the
  plan (minimum detectable effect, expected duration) printed at start;
* :mod:`~relearn.experiments.guardrails`: error rate, p99 latency and score drift limits that stop at once;
* :mod:`~relearn.experiments.result`: the decision, its JSON for the audit trail and the effect plot;
* :mod:`~relearn.experiments.bandit`: Thompson sampling over delayed (matured) rewards;
* :mod:`~relearn.experiments.cli`: ``python -m relearn.experiments start|status|stop|list``.
"""
