"""Transaction data: schema and contract, the synthetic generator with drift scenarios, the lake, validation.

Owns what a transaction, a label and a card holder are (:mod:`.schema`, :mod:`.contract`), the simulated
world (:mod:`.generator`, :mod:`.scenarios`), the day-partitioned Parquet lake (:mod:`.io`, and on Spark
:mod:`.spark_lake` with its session :mod:`.spark_session`) and the validate step's checks (:mod:`.validate`,
:mod:`.validate_spark`). Layer: data, the lowest above the base; imports only the base modules
(``relearn.errors``, ``logs``, ``settings``, ...). Nothing is imported here.
"""
