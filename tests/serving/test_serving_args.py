"""The servers accept what KServe's controller appends to a custom container's args."""

from __future__ import annotations

import pytest

from relearn.serving.config import PredictorSettings, TransformerSettings
from support.kserve import INJECTED, parse


def test_transformer_takes_kserve_injected_args() -> None:
    s = parse(TransformerSettings, INJECTED)
    assert (s.model_name, s.http_port, s.workers) == ("relearn-fraud", 8080, 0)
    # gRPC dials 443 for a bare host; KServe's predictor Service listens on 80.
    assert s.predictor_host == "relearn-fraud-predictor.relearn:80"
    assert parse(TransformerSettings, ["--predictor_host=p.ns:8081"]).predictor_host == "p.ns:8081"


def test_predictor_takes_kserve_style_args_and_still_rejects_typos(capsys) -> None:
    assert parse(PredictorSettings, ["--model_name=m", "--http_port", "9000"]).http_port == 9000
    with pytest.raises(SystemExit):
        parse(PredictorSettings, ["--modle_name=m"])
    assert "unrecognized arguments: --modle_name=m" in capsys.readouterr().err
