"""The reward section is checked when the config is parsed (names, plugins, options, URLs, the
code verifier's time budget), before Ray starts; and the code verifier never downgrades its
sandbox silently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import reward.sandbox as sandbox
from cluster.config import ConfigError, load_config
from cluster.run import check_reward
from reward.config import RewardConfig
from reward.worker import RewardWorker
ROOT = str(Path(__file__).resolve().parents[2])

QUICKSTART = f"{ROOT}/recipes/quickstart.yaml"


@pytest.mark.parametrize("override, message", [
    ("reward.verifier=mathh", r"unknown verifier 'mathh'; valid names: arithmetic, .*code"),
    ("reward.plugins=[no_such.module]", r"reward.plugins\[0\] 'no_such.module' cannot be imported: ModuleNotFound"),
    ("reward.verifier_options={math: {x: 1}}", r"reward.verifier_options.math: 'math' is not among this run's"),
    ("reward.verifier_options={arithmetic: {tolerance: 1}}",
     r"reward.verifier_options.arithmetic.tolerance: arithmetic takes none"),
    ("reward.components={judge: 1.0}", r"reward.judge_url None is not an http\(s\) URL"),
    ("reward.components={reward_model: 1.0}", r"reward.reward_model_path is not set"),
    ("reward.verifier=code", r"reward.timeout_s 2.0 s is shorter than .* verifier_options.code.timeout_s 2.0 s per "
                             r"test x max_tests 32 \+ 1 s = 65 s"),
])
def test_bad_reward_settings_fail_when_parsed_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(QUICKSTART, [override])


def test_the_code_budget_counts_options():
    ok = RewardConfig(verifier="code", timeout_s=6, verifier_options={"code": {"timeout_s": 1, "max_tests": 5}})
    assert ok.uses_sandbox
    with pytest.raises(ValueError, match="= 6 s"):
        RewardConfig(verifier="code", timeout_s=5.9, verifier_options={"code": {"timeout_s": 1, "max_tests": 5}})
    with pytest.raises(ValueError, match=r"code takes timeout_s, memory_mb, max_tests, site_packages"):
        RewardConfig(verifier="code", timeout_s=70, verifier_options={"code": {"timout_s": 1}})


def test_cli_dry_run_stops_on_a_bad_verifier_with_exit_2():
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "run", QUICKSTART, "reward.verifier=mathh", "--dry-run"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "unknown verifier 'mathh'" in out.stderr and "Traceback" not in out.stderr


def test_a_missing_reward_model_is_named_before_ray_starts(tmp_path):
    rm = ["reward.components={reward_model: 1.0}", f"reward.reward_model_path={tmp_path}"]
    with pytest.raises(ConfigError, match=f"reward.reward_model_path '{tmp_path}' is not a Hugging Face checkpoint"):
        check_reward(load_config(QUICKSTART, rm), log=lambda *_: None)
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "run", QUICKSTART, *rm, "--dry-run"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "is not a Hugging Face checkpoint" in out.stderr, out.stderr


def test_no_silent_downgrade_of_the_sandbox(monkeypatch):
    """Where namespaces cannot be made (here: the probe says so, as it does for a non-root user),
    the code verifier refuses to start, in the driver and in every worker, unless accepted."""
    code = ["reward.verifier=code", "reward.timeout_s=70"]
    logged = []
    check_reward(load_config(QUICKSTART, code), log=logged.append)
    assert logged == [f"code verifier sandbox: isolation '{sandbox.isolation_mode()}'"]
    monkeypatch.setattr(sandbox, "isolation_mode", lambda: "rlimits")
    with pytest.raises(ConfigError, match="cannot make namespaces here .* reward.allow_unisolated_sandbox: true"):
        check_reward(load_config(QUICKSTART, code), log=logged.append)
    with pytest.raises(sandbox.SandboxError, match="cannot make namespaces"):
        RewardWorker(load_config(QUICKSTART, code).reward)
    accepted = load_config(QUICKSTART, [*code, "reward.allow_unisolated_sandbox=true"])
    check_reward(accepted, log=logged.append)
    assert logged[-1] == "code verifier sandbox: isolation 'rlimits'"
    RewardWorker(accepted.reward)
    assert sandbox.sandbox_isolation(accepted.reward) == "rlimits"
    assert sandbox.sandbox_isolation(load_config(QUICKSTART, []).reward) is None  # no code to run
