"""The training pipeline: ingest → validate → features → train → evaluate → register → gate → deploy.

On a cluster every step reads relearn's settings from the ConfigMap ``relearn-pipeline-env`` that the chart
renders in the namespace of the KFP run pods (``kubeflow.runNamespace``): MLflow, Redis and the Feast registry
server of the release, and the InferenceService the deploy step starts a canary or shadow on. The compiled
pipeline carries that mapping (kfp-kubernetes platform config), so a run started from the Kubeflow UI or by
the drift detector's trigger is wired like one from ``make``. ``kfp.local`` ignores platform config.
"""

from kfp import dsl, kubernetes

from components import PIPELINE_IMAGE
from components.deploy.component import deploy
from components.evaluate.component import evaluate
from components.features.component import features
from components.gate.component import gate
from components.ingest.component import ingest
from components.register.component import register
from components.train.component import train
from components.validate.component import validate
from relearn.settings import ALERT_BUDGET

PIPELINE_NAME = "relearn-train"

# charts/relearn/templates/pipeline-env-configmap.yaml: its fixed name and data keys (each becomes the env var
# of the same name). tests/pipeline/test_pipeline_compile.py checks them against the rendered chart.
PIPELINE_ENV_CONFIG_MAP = "relearn-pipeline-env"
PIPELINE_ENV_KEYS = (
    "RELEARN_HOME",
    "RELEARN_MLFLOW_TRACKING_URI",
    "RELEARN_MODEL_NAME",
    "RELEARN_FEAST_PROJECT",
    "RELEARN_FEAST_ONLINE_STORE",
    "RELEARN_FEAST_REDIS_CONNECTION",
    "RELEARN_FEAST_REGISTRY",
    "RELEARN_FEAST_OFFLINE_DIR",
    "RELEARN_STATE_BACKEND",  # the features step bootstraps the transformers' streaming state
    "RELEARN_STATE_REDIS_URLS",
    "RELEARN_STATE_CLOCK",
    "RELEARN_STATE_LATENESS_SECONDS",
    "RELEARN_STATE_MAX_FUTURE_SECONDS",
    "RELEARN_ROLLOUT_BACKEND",
    "RELEARN_ROLLOUT_NAMESPACE",
    "RELEARN_ROLLOUT_INFERENCE_SERVICE",
    "RELEARN_ROLLOUT_MODEL_NAME",
    "RELEARN_ROLLOUT_VIRTUAL_SERVICE",
    "RELEARN_ROLLOUT_SHADOW_SERVICE",
    "RELEARN_EXPERIMENT_CONFIGMAP",  # the deploy step: no canary while an experiment runs (its store)
    "RELEARN_SPARK_ENGINE",  # the validate and features steps on Spark (the chart's spark.*)
    "RELEARN_SPARK_AUTO_ROWS",
    "RELEARN_SPARK_SUBMIT",
    "RELEARN_SPARK_APP_NAMESPACE",
    "RELEARN_SPARK_APP_IMAGE",
    "RELEARN_SPARK_APP_SPARK_VERSION",
    "RELEARN_SPARK_APP_SERVICE_ACCOUNT",
    "RELEARN_SPARK_APP_DRIVER_CORES",
    "RELEARN_SPARK_APP_DRIVER_MEMORY",
    "RELEARN_SPARK_APP_EXECUTORS",
    "RELEARN_SPARK_APP_EXECUTOR_CORES",
    "RELEARN_SPARK_APP_EXECUTOR_MEMORY",
    "RELEARN_SPARK_APP_SHUFFLE_PARTITIONS",
    "RELEARN_SPARK_APP_TIMEOUT_SECONDS",
    "RELEARN_SPARK_APP_LAKE_URI",
    "RELEARN_SPARK_APP_S3_ENDPOINT",
    "RELEARN_SPARK_APP_S3_SECRET",
)


# With feast.redis.auth: the Redis password, from this Secret of the run namespace (manifests/README.md), for
# Feast's online store and the streaming state (the chart's Redis servers share it). Optional: without auth
# the Secret does not exist and the pods start all the same.
REDIS_AUTH_SECRET = "relearn-redis-auth"
REDIS_AUTH_KEY, REDIS_PASSWORD_ENV = "password", "RELEARN_REDIS_PASSWORD"
STATE_PASSWORD_ENV = "RELEARN_STATE_REDIS_PASSWORD"


def with_cluster_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The step's pod gets the run namespace's relearn settings as env vars (kfp-kubernetes).

    And the Redis password (``RELEARN_REDIS_PASSWORD``, ``RELEARN_STATE_REDIS_PASSWORD``) when the run
    namespace holds its Secret.
    """
    # One entry per env var: a secretAsEnv maps each key once.
    for env in (REDIS_PASSWORD_ENV, STATE_PASSWORD_ENV):
        kubernetes.use_secret_as_env(task, REDIS_AUTH_SECRET, {REDIS_AUTH_KEY: env}, optional=True)
    return kubernetes.use_config_map_as_env(task, PIPELINE_ENV_CONFIG_MAP, {k: k for k in PIPELINE_ENV_KEYS})


@dsl.pipeline(name=PIPELINE_NAME, description="relearn: train, evaluate and register a fraud model.")
def train_pipeline(
    start: str = "2026-01-01",
    days: int = 35,
    users: int = 3000,
    merchants: int = 500,
    seed: int = 7,
    scenario: str = "none",
    onset: str = "",
    source: str = "",
    label_maturity_days: int = 10,
    join_engine: str = "pandas",
    data_engine: str = "",
    epochs: int = 30,
    batch_size: int = 2048,
    learning_rate: float = 0.002,
    patience: int = 5,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    workers: int = 1,
    distributed_backend: str = "auto",
    train_mode: str = "scratch",
    replay_fraction: float = 0.1,
    scratch_every: int = 5,
    params_from: str = "",
    alert_budget: float = ALERT_BUDGET,
    min_improvement: float = 0.01,
    warm_min_improvement: float = -0.02,
    max_slice_regression: float = 0.15,
    max_behavioral_failure_rate: float = 0.05,
    git_sha: str = "unknown",
    rollout_mode: str = "none",
    rollout_percent: float = 0.0,
) -> str:
    """Trains a challenger on a data window and says whether it should replace the champion.

    Args:
        start: First day of the data window (ISO date, UTC).
        days: Length of the window in days; labels are those known at its end.
        users: Card holders to simulate when no `source` is given.
        merchants: Merchants to simulate when no `source` is given.
        seed: Seed for data generation, splits and training.
        scenario: Drift scenario of the simulated data (none, covariate_shift, concept_drift, ...).
        onset: When the scenario starts: ISO timestamp, "day N" or a window fraction; empty = mid-window.
        source: Root of day-partitioned Parquet to read instead of simulating.
        label_maturity_days: Newest days kept out of training rows: their chargebacks are still due.
        join_engine: Point-in-time join: "pandas" (merge_asof over the registered Feast sources, fast)
            or "feast" (get_historical_features; minutes for 10k rows on the file offline store).
        data_engine: Validation, entity tables and training set on "pandas", "spark" (local Spark, same
            rows and report) or "auto" (Spark from RELEARN_SPARK_AUTO_ROWS transactions, default 2 M);
            empty: the release's (RELEARN_SPARK_ENGINE, chart value spark.engine; default pandas).
        epochs: Maximum training epochs.
        batch_size: Training batch size.
        learning_rate: Adam learning rate.
        patience: Epochs without validation PR-AUC gain before stopping.
        val_fraction: Share of the window (by time) used for early stopping.
        test_fraction: Share of the window (latest by time) held out for evaluation.
        workers: Training processes; above 1, data-parallel (DDP, gloo) with the same result as one.
        distributed_backend: Where several workers run: "local" (torchrun on the step's machine),
            "pytorchjob" (a Kubeflow PyTorchJob the step submits and waits for) or "auto" (a PyTorchJob when
            the step runs in a Kubeflow Pipelines pod, local otherwise, e.g. under kfp.local).
        train_mode: "scratch", "warm" (fine-tune the champion; refused if it is incompatible) or "auto"
            (the retraining policy: warm when a compatible champion exists, else scratch, with the reason).
        replay_fraction: Share of a warm start's rows sampled from rows older than the champion's.
        scratch_every: Under "auto", every Nth retraining is from scratch.
        params_from: "best": train with the best hyper-parameters of the newest tuning study in MLflow
            (`make tune`) instead of batch_size and learning_rate; "" (default): these parameters.
        alert_budget: Share of transactions the fraud team can review (recall is measured there).
        min_improvement: Gain on the primary metric the challenger must show over the champion, as the
            lower bound of its one-sided 97.5 % paired-bootstrap interval on the holdout.
        warm_min_improvement: The same for a challenger that fine-tuned the champion (train_mode warm or
            auto): -0.02 asks it only not to be worse by more than 0.02 (the champion plus fresh data).
        max_slice_regression: Largest tolerated drop of any slice's recall vs the champion.
        max_behavioral_failure_rate: Largest share of failing cases of a behavioral test (the suite in
            relearn/model/behavior/suite.yaml) that sets no max_failure_rate of its own; 1 = not gated.
        git_sha: Commit of the code that trained the model (lineage).
        rollout_mode: What a challenger that passed the gate starts as: "shadow", "canary" or "none".
        rollout_percent: Its share of the traffic (mirrored for a shadow); 0 for the default (the first
            canary step, or 100 % mirrored).
    """
    data = ingest(
        start=start,
        days=days,
        users=users,
        merchants=merchants,
        seed=seed,
        scenario=scenario,
        onset=onset,
        source=source,
    )
    checked = validate(
        start=start, days=days, transactions=data.outputs["transactions"], data_engine=data_engine
    )
    feats = features(
        start=start,
        days=days,
        transactions=data.outputs["transactions"],
        labels=data.outputs["labels"],
        label_maturity_days=label_maturity_days,
        join_engine=join_engine,
        data_engine=data_engine,
    ).after(checked)
    trained = train(
        training_set=feats.outputs["training_set"],
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        workers=workers,
        distributed_backend=distributed_backend,
        image=PIPELINE_IMAGE,  # the PyTorchJob's pods run the steps' image
        train_mode=train_mode,
        replay_fraction=replay_fraction,
        scratch_every=scratch_every,
        params_from=params_from,
    )
    evaluated = evaluate(
        training_set=feats.outputs["training_set"],
        model=trained.outputs["model"],
        mlflow_run_id=trained.outputs["mlflow_run_id"],
        alert_budget=alert_budget,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )
    registered = register(
        model=trained.outputs["model"],
        training_set=feats.outputs["training_set"],
        evaluation=evaluated.outputs["evaluation"],
        mlflow_run_id=trained.outputs["mlflow_run_id"],
        start=start,
        days=days,
        git_sha=git_sha,
        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )
    decided = gate(
        evaluation=evaluated.outputs["evaluation"],
        model_version=registered.output,
        min_improvement=min_improvement,
        max_slice_regression=max_slice_regression,
        max_behavioral_failure_rate=max_behavioral_failure_rate,
        warm_min_improvement=warm_min_improvement,
    )
    deployed = deploy(
        model_version=registered.output,
        gate_passed=decided.outputs["passed"],
        rollout_mode=rollout_mode,
        percent=rollout_percent,
    )
    for task in (data, checked, feats, trained, evaluated, registered, decided, deployed):
        with_cluster_env(task)
    return deployed.outputs["reason"]
