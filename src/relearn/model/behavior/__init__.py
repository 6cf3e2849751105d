"""The declared behavioral suite (``suite.yaml``) and its schema (:mod:`relearn.model.behavior.suite`).

The suite is data, not code: users extend it by adding entries to ``suite.yaml`` (or pass their own file);
:mod:`relearn.model.behavioral` runs it against a model.
Part of the model layer (see :mod:`relearn.model`); imports features, data and the base modules.
"""
