"""relearn: the iterative ML loop (data, features, training, serving, monitoring, retraining).

The packages are layers, bottom to top; a module imports only from its own layer and the ones below:
base (the dependency-free top-level modules: ``errors``, ``logs``, ``settings``, ``events``, ``kube``,
``routing``) → data → features → model, monitoring → serving → rollout, experiments → the entry points
(``demo``, the pipeline steps ``steps``, ``training``, ``evaluation``, and each ``__main__``). Packages on
one level may import each other. ``tests/test_layering.py`` holds the table and fails on an import from a
higher layer. Nothing is imported here: no import-time work.
"""

__version__ = "0.1.0"
