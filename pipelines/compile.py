"""Compile relearn's pipelines to the YAML that the Kubeflow Pipelines UI and API accept.

Usage: ``python -m pipelines.compile --out pipelines/compiled`` (``make pipelines``).
"""

from __future__ import annotations

from pathlib import Path

from kfp import compiler
from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from pipelines import recalibrate, train

PIPELINES = {
    train.PIPELINE_NAME: train.train_pipeline,
    recalibrate.PIPELINE_NAME: recalibrate.recalibrate_pipeline,
}


def compile_all(out: Path) -> list[Path]:
    """Compiles every pipeline into ``out/<name>.yaml`` and returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline in PIPELINES.items():
        path = out / f"{name}.yaml"
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
        written.append(path)
    return written


class CompileSettings(BaseSettings):
    """Compile relearn's pipelines to Kubeflow Pipelines YAML."""

    model_config = SettingsConfigDict(
        env_prefix="RELEARN_COMPILE_", cli_prog_name="relearn-compile", cli_kebab_case=True
    )

    out: Path = Field(Path("pipelines/compiled"), description="Directory for the compiled YAML files.")

    def cli_cmd(self) -> None:
        """Compiles and prints what was written."""
        for path in compile_all(self.out):
            print(f"compiled {path}")


def main() -> None:
    """Console entry point."""
    CliApp.run(CompileSettings)


if __name__ == "__main__":
    main()
