"""Experiment metrics: Prometheus names (promtool's lint), values from a result, a bandit's shares."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import generate_latest

from relearn.experiments.exporter import ExperimentMetrics
from relearn.experiments.guardrails import ArmHealth, check
from relearn.experiments.result import decide
from relearn.experiments.sequential import ArmStats, look


def exposition() -> tuple[ExperimentMetrics, str]:
    m = ExperimentMetrics()
    last = look(ArmStats(5000, 1.0, 4.0), ArmStats(5000, 0.7, 4.0), tau=0.1, alpha=0.05)
    result = decide("ab1", "v7", "v8", [last], days=9, max_days=60, arms={"v7": {"loss_per_card": 1.0}})
    m.update_result(result)
    m.update_shares("ab1", {"v7": 0.5, "v8": 0.5})
    m.record_guardrails("ab1", check([ArmHealth("v8", requests=1000, errors=50, p99_seconds=0.01)]))
    return m, generate_latest(m.registry).decode()


def test_values_follow_the_result():
    _, text = exposition()
    assert 'relearn_experiment_arm_share{arm="v8",experiment="ab1"} 0.5' in text
    assert 'relearn_experiment_arm_cards{arm="v7",experiment="ab1"} 5000.0' in text
    assert 'relearn_experiment_running{experiment="ab1"} 0.0' in text  # a winner: no longer running
    assert (
        'relearn_experiment_guardrail_breaches_total{arm="v8",experiment="ab1",guardrail="error_rate"} 1.0'
        in text
    )
    assert 'relearn_experiment_effect{bound="estimate",experiment="ab1"} -0.3' in text


BANDIT = {
    "name": "b1",
    "split": {"v7": 34, "v8": 33, "v9": 33},
    "shares": {"v7": 1.0, "v8": 0.0, "v9": 0.0},
    "bandit": {"fallback": True, "reward_age_s": 4 * 86400.0},
}


def test_routing_follows_the_running_experiment():
    m = ExperimentMetrics()
    m.update_routing({"name": "ab1", "split": {"v7": 70, "v8": 30}})
    text = generate_latest(m.registry).decode()
    assert 'relearn_experiment_arm_share{arm="v8",experiment="ab1"} 0.3' in text
    m.update_routing(BANDIT)  # ab1 stopped, the bandit b1 runs and has fallen back to its control
    text = generate_latest(m.registry).decode()
    assert 'experiment="ab1"' not in text
    assert 'relearn_experiment_arm_share{arm="v7",experiment="b1"} 1.0' in text
    assert 'relearn_experiment_bandit_fallback{experiment="b1"} 1.0' in text
    assert 'relearn_experiment_bandit_reward_age_seconds{experiment="b1"} 345600.0' in text
    m.update_routing(None)
    assert "relearn_experiment_arm_share{" not in generate_latest(m.registry).decode()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) not installed")
def test_names_pass_promtool_lint():
    bandit = ExperimentMetrics()
    bandit.update_routing(BANDIT)
    for text in (exposition()[1], generate_latest(bandit.registry).decode()):
        out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
