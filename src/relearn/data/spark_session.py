"""The Spark session of the data engine (validate and features steps), its settings, and readable JVM errors.

Local mode by default (``local[*]`` in this process's JVM, pyspark from PyPI, Java from Debian); a cluster
sets ``RELEARN_SPARK_MASTER`` (the Spark Operator's driver does it through its own ``spark-submit``).
Nothing starts at import: :func:`spark_session` creates (or reuses) the session on first use.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, Literal, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from relearn.errors import RelearnError

T = TypeVar("T")


class SparkSettings(BaseSettings):
    """How the features step runs Spark (``RELEARN_SPARK_*``)."""

    model_config = SettingsConfigDict(env_prefix="RELEARN_SPARK_", extra="ignore")

    engine: Literal["pandas", "spark", "auto"] = Field(
        "pandas", description="The release's data engine: what a run's empty data_engine parameter means."
    )
    submit: Literal["local", "operator"] = Field(
        "local",
        description="local: Spark in the step's process; operator: a SparkApplication in the cluster.",
    )
    master: str = Field("local[*]", description="Spark master URL; local[N] runs Spark in this process.")
    driver_memory: str = Field("4g", description="Driver heap (local mode: the whole engine's heap).")
    # 10 M transactions in local[2] with a 4g heap: 8 partitions passed 10 GB of RSS, 32 stayed near 5.3 GB.
    shuffle_partitions: int = Field(32, ge=1, description="spark.sql.shuffle.partitions (per shuffle).")
    local_dir: str = Field("", description="Scratch space for shuffles and spills; default Spark's /tmp.")
    # `auto` picks Spark above this many transactions in the lake: pandas needs ~2.4 GB per million
    # (the measure), so 2 M is about what a 4-6 GB pod can still hold.
    auto_rows: int = Field(2_000_000, ge=0, description="--data-engine auto: Spark from this many rows.")


class SparkEngineError(RelearnError, RuntimeError):
    """Spark failed: the first line of the JVM's message, without its stack trace."""


def java_available() -> bool:
    """Whether a Java runtime is there for a local Spark (``JAVA_HOME`` or ``java`` on ``PATH``)."""
    home = os.environ.get("JAVA_HOME")
    return (
        bool(home and os.path.exists(os.path.join(home, "bin", "java"))) or shutil.which("java") is not None
    )


def spark_available() -> bool:
    """Whether pyspark imports and Java is present: what ``--data-engine spark`` needs locally."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return java_available()


def spark_session(settings: SparkSettings | None = None):
    """The active SparkSession, or a new one with relearn's configuration.

    UTC session time zone (event times are UTC everywhere), Arrow for pandas exchange, adaptive query
    execution off so partition counts (and float summation order) do not depend on run-time statistics.
    """
    if not spark_available():
        raise SparkEngineError(
            "Spark needs pyspark and a Java runtime: `make setup` installs both (pyspark from "
            "requirements/platform.txt, Debian's openjdk-17-jre-headless)."
        )
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    settings = settings or SparkSettings()
    builder = SparkSession.builder.appName("relearn-features")
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):  # set by spark-submit, whose configuration wins
        builder = (
            builder.master(settings.master)
            .config("spark.driver.memory", settings.driver_memory)
            .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        )
    builder = (
        builder.config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")  # what pyarrow writes too
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if settings.master.startswith("local"):  # Python workers: this interpreter (the venv with relearn)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # pyspark's context reads only the env
    if settings.local_dir:
        builder = builder.config("spark.local.dir", settings.local_dir)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def first_line(exc: BaseException) -> str:
    """The readable part of a Spark/py4j error: its first non-empty line, without the JVM frames."""
    text = getattr(exc, "desc", None) or getattr(exc, "getMessage", lambda: None)() or str(exc)
    for line in str(text).splitlines():
        if line.strip() and not line.lstrip().startswith("at "):
            return line.strip()[:500]
    return type(exc).__name__


def readable_errors(func: Callable[..., T]) -> Callable[..., T]:
    """Run ``func``, turning py4j/Spark exceptions into :class:`SparkEngineError` (one line, no JVM trace)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        try:
            return func(*args, **kwargs)
        except (PySparkException, Py4JError) as exc:
            raise SparkEngineError(f"Spark failed in {func.__name__}: {first_line(exc)}") from None

    return wrapper
