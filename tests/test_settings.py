"""One way to read settings: flags, else RENDERQ_* variables, parsed alike by the coordinator and the worker."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from coordinator.config import Config
from coordinator.scheduler import Policy
from renderq.settings import env_value, parse_bool
from renderq.units import parse_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_worker_command(env: dict[str, str]) -> subprocess.CompletedProcess:
    """`renderq worker` as a user runs it, with these variables added; --help, so it starts no worker."""
    return subprocess.run([sys.executable, "-m", "renderq", "worker", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT, **env})


@pytest.mark.parametrize("text, on", [("1", True), ("TRUE", True), (" yes ", True), ("On", True), ("0", False),
                                      ("false", False), ("no", False), ("OFF", False)])
def test_switches_read_on_and_off(text, on):
    assert parse_bool(text) is on


def test_a_switch_that_is_neither_is_refused_not_taken_as_off():
    with pytest.raises(ValueError, match="1 or 0"):
        parse_bool("maybe")
    with pytest.raises(ValueError, match="RENDERQ_INSECURE must be 1 or 0"):
        env_value("insecure", parse_bool, {"RENDERQ_INSECURE": "maybe"})


def test_the_coordinator_and_the_worker_read_sizes_alike():
    assert Config.from_env({"RENDERQ_UPLOAD_LIMIT": "1.5 GiB"}).upload_limit == parse_size("1.5G") == 1536 * 1024**2
    assert env_value("cache_size", parse_size, {"RENDERQ_CACHE_SIZE": "2GB"}) == 2 * 1024**3
    assert env_value("cache_size", parse_size, {"RENDERQ_CACHE_SIZE": " "}) is None  # empty: not given


def test_the_worker_refuses_a_bad_switch_in_its_environment_with_a_sentence():
    # Before, RENDERQ_ALLOW_BLEND_PYTHON=maybe silently meant "off"; the coordinator's parser refused it.
    result = run_worker_command({"RENDERQ_ALLOW_BLEND_PYTHON": "maybe"})
    assert result.returncode == 2, result.stderr
    assert "RENDERQ_ALLOW_BLEND_PYTHON must be 1 or 0 (true or false), not 'maybe'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_worker_refuses_a_bad_size_in_its_environment_with_a_sentence():
    result = run_worker_command({"RENDERQ_CACHE_SIZE": "lots"})
    assert result.returncode == 2 and "RENDERQ_CACHE_SIZE" in result.stderr and "Traceback" not in result.stderr
    assert run_worker_command({"RENDERQ_CACHE_SIZE": "500M", "RENDERQ_ALLOW_BLEND_PYTHON": "on"}).returncode == 0


def test_the_policy_is_the_config_s_without_a_copy_by_hand():
    config = Config.from_env({"RENDERQ_ALIVE_TIMEOUT": "40", "RENDERQ_FRAME_FAIL_WORKERS": "5",
                              "RENDERQ_BAD_WORKER_FAILURES": "2", "RENDERQ_FRAME_TIMEOUT": "90",
                              "RENDERQ_NO_PROGRESS_TIMEOUT": "120", "RENDERQ_HEARTBEAT_SECONDS": "3"})
    policy = Policy.from_config(config)
    shared = [f.name for f in dataclasses.fields(Policy) if hasattr(config, f.name)]
    assert len(shared) >= 7  # lease_seconds, alive_timeout, heartbeat, both failure counts, both timeouts
    assert all(getattr(policy, name) == getattr(config, name) for name in shared)
    assert policy.lease_seconds == 40 and policy.frame_fail_workers == 5 and policy.no_progress_timeout == 120
