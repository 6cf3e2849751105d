"""Features: windowed entity aggregates (Feast) and request-time features, shared by training and serving.

Owns the one definition of each feature (:mod:`.spec`, :mod:`.windows`, :mod:`.transforms`) and its
engines: pandas, Spark (:mod:`.spark_engine`, :mod:`.spark_step`), the streaming state the transformers
update (:mod:`.state` with its SQLite and Redis backends), the Feast repo (:mod:`.store`) and the backfill.
Layer: features; imports :mod:`relearn.data` and the base modules, never the model or anything above.
Nothing is imported here.
"""
