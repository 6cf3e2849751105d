"""The MLflow side: a pyfunc wrapper around the torch artifact, registration with lineage, and aliases.

Aliases replace the deprecated stages: ``challenger`` is the newest registered candidate, ``champion``
the model serving the stable traffic. Models load as ``models:/<name>@<alias>``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from relearn.features.spec import FEATURE_SERVICE, LABEL, MODEL_INPUTS
from relearn.model.net import CONFIG_FILE, load_model, save_model, score
from relearn.model.train import TrainResult
from relearn.monitoring.detector import LABEL as REFERENCE_LABEL
from relearn.settings import RelearnSettings

log = logging.getLogger(__name__)


CHAMPION = "champion"
CHALLENGER = "challenger"
TORCH_ARTIFACT = "torch_model"
REFERENCE_ARTIFACT = "reference/reference.parquet"
METRICS_ARTIFACT = "evaluation/metrics.json"
REFERENCE_ROWS = 5000
LINEAGE_KEYS = ("data_window", "feature_service", "git_sha", "pipeline_run_id")


class FraudModel(PythonModel):
    """pyfunc wrapper: MODEL_INPUTS DataFrame in, ``score`` and ``decision`` columns out."""

    def load_context(self, context: Any) -> None:
        """Load the torch artifact that MLflow copied next to the model."""
        self.net, self.preprocessor, self.metadata = load_model(context.artifacts[TORCH_ARTIFACT])
        self.threshold = float(self.metadata.get("threshold", 0.5))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Score a batch in one forward pass; ``decision`` is ``score >= threshold`` from the metadata."""
        scores = score(self.net, self.preprocessor, model_input)
        return pd.DataFrame({"score": scores, "decision": scores >= self.threshold})


@dataclass
class ModelVersionInfo:
    """A registered model version and the aliases it holds."""

    name: str
    version: str
    uri: str
    run_id: str
    aliases: list[str] = field(default_factory=list)
    reference_uri: str | None = None


def setup_mlflow(settings: RelearnSettings) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; returns its id."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri())
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = mlflow.create_experiment(
            settings.experiment, artifact_location=settings.artifact_root()
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _client(settings: RelearnSettings) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())


def pip_requirements() -> list[str]:
    """Explicit requirements, so ``log_model`` does not spend seconds inferring them.

    The ``relearn`` package itself must be installed where the model is loaded (it is in every image):
    the pyfunc class is pickled by reference to ``relearn.model.registry``.
    """
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "torch", "pandas", "numpy", "pyarrow")]


def _stage_artifact(source: TrainResult | str | Path, threshold: float, workdir: Path) -> Path:
    """A copy of the torch artifact with the decision threshold written into its metadata."""
    target = workdir / TORCH_ARTIFACT
    if isinstance(source, TrainResult):
        save_model(target, source.net, source.preprocessor, {"threshold": threshold})
        return target
    shutil.copytree(source, target)
    config = json.loads((target / CONFIG_FILE).read_text())
    config["metadata"]["threshold"] = threshold
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
    return target


def register(
    source: TrainResult | str | Path,
    *,
    settings: RelearnSettings,
    run_id: str,
    metrics: Mapping[str, Any],
    train_sample: pd.DataFrame,
    lineage: Mapping[str, Any],
    threshold: float,
    importance: Mapping[str, float] | None = None,
) -> ModelVersionInfo:
    """Log the model as pyfunc in run ``run_id``, register it, tag lineage, and set aliases.

    Also stores a reference sample of the training features (MODEL_INPUTS + ``score``, and the label as
    ``is_fraud`` when ``train_sample`` has one) as
    ``reference/reference.parquet`` in the run for the drift detector, and the full evaluation
    ``metrics`` as ``evaluation/metrics.json``. The new version gets ``challenger``; it also becomes
    ``champion`` when the registered model has none yet.

    Args:
        source: A training result, or a directory written by :func:`relearn.model.net.save_model`.
        settings: Where MLflow lives and the registered model name.
        run_id: The MLflow run the model belongs to (may already be active).
        metrics: Evaluation metrics (see :func:`relearn.model.evaluate.evaluate`); scalars become tags.
        train_sample: Training rows with MODEL_INPUTS; used for the signature, the input example and
            the reference sample.
        lineage: Tags such as data_window, feature_service, git_sha, pipeline_run_id (extra keys kept).
        threshold: The decision threshold serving applies to the score.
        importance: Permutation importance per input, carried in the reference sample's Parquet metadata
            (``attrs["feature_importance"]``): the drift report ranks drifted inputs by it.

    Returns:
        The registered version, its ``models:/`` URI and aliases.
    """
    import mlflow
    from mlflow.models import infer_signature

    setup_mlflow(settings)
    client = _client(settings)
    inputs = train_sample[list(MODEL_INPUTS)].reset_index(drop=True)
    reference = inputs.sample(n=min(REFERENCE_ROWS, len(inputs)), random_state=0).sort_index()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        artifact_dir = _stage_artifact(source, threshold, workdir)
        net, preprocessor, _ = load_model(artifact_dir)
        reference = reference.assign(score=score(net, preprocessor, reference))
        if LABEL in train_sample:  # the detector's prior-shift test and recall baseline read the labels
            labels = train_sample[LABEL].reset_index(drop=True).loc[reference.index]
            reference = reference.assign(**{REFERENCE_LABEL: labels.astype("int8").to_numpy()})
        example = inputs.head(5)
        example_scores = score(net, preprocessor, example)
        signature = infer_signature(
            example, pd.DataFrame({"score": example_scores, "decision": example_scores >= threshold})
        )
        reference_path = workdir / "reference.parquet"
        if importance:
            reference.attrs["feature_importance"] = {k: float(v) for k, v in importance.items()}
        reference.to_parquet(reference_path, index=False)

        active = mlflow.active_run()
        ctx = mlflow.start_run(run_id=run_id) if active is None or active.info.run_id != run_id else None
        try:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=FraudModel(),
                artifacts={TORCH_ARTIFACT: str(artifact_dir)},
                signature=signature,
                input_example=example,
                registered_model_name=settings.model_name,
                pip_requirements=pip_requirements(),
            )
            mlflow.log_artifact(str(reference_path), artifact_path=Path(REFERENCE_ARTIFACT).parent.as_posix())
            mlflow.log_dict(_jsonable(dict(metrics)), METRICS_ARTIFACT)
            reference_uri = mlflow.get_artifact_uri(REFERENCE_ARTIFACT)
        finally:
            if ctx is not None:
                mlflow.end_run()

    version = str(info.registered_model_version)
    tags: dict[str, Any] = {"feature_service": FEATURE_SERVICE, **lineage}
    for key in LINEAGE_KEYS:
        tags.setdefault(key, "unknown")
    tags |= {
        "run_id": run_id,
        "threshold": threshold,
        "reference_uri": reference_uri,
        "reference_run_uri": f"runs:/{run_id}/{REFERENCE_ARTIFACT}",
        "metrics_uri": f"runs:/{run_id}/{METRICS_ARTIFACT}",
    }
    tags |= {
        f"metric.{k}": v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    tag_version(settings, version, tags)

    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    aliases = [CHALLENGER]
    if get_alias_version(settings, CHAMPION) is None:
        client.set_registered_model_alias(settings.model_name, CHAMPION, version)
        aliases.append(CHAMPION)
    log.info("registered", extra={"model": settings.model_name, "version": version, "aliases": aliases})
    return ModelVersionInfo(
        name=settings.model_name,
        version=version,
        uri=f"models:/{settings.model_name}/{version}",
        run_id=run_id,
        aliases=aliases,
        reference_uri=reference_uri,
    )


def _jsonable(value: Any) -> Any:
    """Metrics as plain JSON types (numpy scalars and NaN would trip ``json``)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def tag_version(settings: RelearnSettings, version: str | int, tags: Mapping[str, Any]) -> None:
    """Set tags on a model version (values as text, cut to MLflow's 5,000 characters)."""
    client = _client(settings)
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, str(version), key, str(value)[:5000])


def get_alias_version(settings: RelearnSettings, alias: str) -> str | None:
    """The version holding ``alias``, or None when the alias (or the registered model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(settings).get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException:
        return None


def set_alias(settings: RelearnSettings, alias: str, version: str | int) -> None:
    """Point ``alias`` at ``version`` (promotion moves ``champion``; a rollback moves it back)."""
    _client(settings).set_registered_model_alias(settings.model_name, alias, str(version))


def get_version_tags(settings: RelearnSettings, version: str | int) -> dict[str, str]:
    """The tags (lineage, reference URI, metrics) of a model version."""
    return dict(_client(settings).get_model_version(settings.model_name, str(version)).tags)


def version_trained(settings: RelearnSettings, version: str | int) -> float:
    """When the training run of ``version`` started (epoch s), else when it was registered.

    Its data window was read before: traffic served later is outside its training data.
    """
    client = _client(settings)
    mv = client.get_model_version(settings.model_name, str(version))
    if mv.run_id:
        return client.get_run(mv.run_id).info.start_time / 1000
    return mv.creation_timestamp / 1000


def load_torch(settings: RelearnSettings, version: str | int) -> tuple[Any, Any]:
    """The network and preprocessor of ``version``: a pyfunc model's torch artifact, or a bare artifact."""
    from mlflow.artifacts import download_artifacts

    # The version's own artifact URI: a models:/ URI would resolve against the process's default registry.
    source = _client(settings).get_model_version_download_uri(settings.model_name, str(version))
    with tempfile.TemporaryDirectory(prefix="relearn-model-") as tmp:
        local = Path(
            download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=settings.tracking_uri())
        )
        found = [d for d in (local / "artifacts" / TORCH_ARTIFACT, local) if (d / CONFIG_FILE).exists()]
        if not found:
            raise FileNotFoundError(f"version {version} holds no relearn model artifact")
        net, preprocessor, _ = load_model(found[0])
    return net, preprocessor


def load_champion(settings: RelearnSettings) -> tuple[Any, str] | None:
    """The champion as a pyfunc model and its version, or None before the first registration."""
    import mlflow

    version = get_alias_version(settings, CHAMPION)
    if version is None:
        return None
    mlflow.set_tracking_uri(settings.tracking_uri())
    # Load by number, not alias: the alias could move between the lookup and the load.
    return mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}"), version


def export_champion_reference(settings: RelearnSettings) -> Path | None:
    """Copy the champion's reference sample to ``settings.drift_reference()``; None without a champion.

    The local drift detector (``make drift``) reads it there by default: its environment's mlflow-skinny
    cannot open the SQLite registry. The copy replaces the file atomically.
    """
    from mlflow.artifacts import download_artifacts

    version = get_alias_version(settings, CHAMPION)
    if version is None:
        return None
    tags = get_version_tags(settings, version)
    uri = tags.get("reference_run_uri") or tags.get("reference_uri")
    if not uri:
        return None
    target = settings.drift_reference()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        local = download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=settings.tracking_uri())
        Path(local).replace(target)
    return target
