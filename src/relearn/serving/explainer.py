"""``python -m relearn.serving.explainer``: the KServe explainer, answering ``/v1/models/<m>:explain``.

It loads the registered model as the predictor does and reads the streaming state (``RELEARN_STATE_*``)
without updating it; see :mod:`relearn.serving.explainer_model` for the request and response.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from relearn.logs import configure_logging
from relearn.serving.config import _CLI, ModelServingSettings, run_cli, strip_argv


class ExplainerSettings(ModelServingSettings):
    """relearn explainer: per-prediction attributions (Integrated Gradients) on KServe's v1 :explain.

    Every option can also be set as an environment variable RELEARN_EXPLAINER_<OPTION>.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_EXPLAINER_", cli_prog_name="python -m relearn.serving.explainer", **_CLI
    )

    max_batch_size: int = Field(64, ge=1, description="Most rows explained per request; more is a 400.")
    top: int | None = Field(
        None, ge=1, description="Inputs listed per row, largest attributions first (default: all)."
    )
    predictor_host: str = Field(
        "",
        description="KServe appends it; unused: the explainer has its own copy of the model.",
    )

    def cli_cmd(self) -> None:
        """Load the model, open the streaming state, serve until interrupted."""
        strip_argv()
        from relearn.serving import server
        from relearn.serving.explainer_model import FraudExplainer

        server.serve(FraudExplainer(self), self)


def main(argv: list[str] | None = None) -> None:
    """Parse the options (``--help`` lists them; KServe's injected ones too) and run the explainer."""
    configure_logging()
    run_cli(ExplainerSettings, argv)


if __name__ == "__main__":
    main()
