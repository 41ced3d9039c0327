"""orchestrator.settings: every GPURUN_* read of the controller, typed, in one module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator import settings
from orchestrator.settings import SettingsError, SSHOverride

REPO = Path(__file__).resolve().parents[1]

# Call sites in modules other helpers own, to be switched to settings by the lead; each entry must
# still read the environment (a switched file fails the test until it leaves this list).
NOT_YET_SWITCHED: set[str] = set()
# Reads the whole environment for secret values to mask: not a setting.
READS_ALL_OF_THE_ENVIRONMENT = {"redact.py"}


def test_defaults_when_nothing_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert settings.home({}) == Path.home() / ".gpurun"
    assert settings.runs_dir(env={}) == tmp_path / "runs"
    assert settings.ssh_override({}) is None
    assert settings.remote_root({}) == "gpurun"
    assert settings.self_destruct_cmd({}) is None
    assert settings.verify_timeout_s(env={}) == 600.0


def test_empty_values_count_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blank = {name: "  " for name in settings.VARIABLES}
    assert settings.home(blank) == Path.home() / ".gpurun"
    assert settings.runs_dir(env=blank) == tmp_path / "runs"
    assert settings.ssh_override(blank) is None
    assert settings.remote_root(blank) == "gpurun"  # never "/<run-id>" at the instance's filesystem root
    assert settings.self_destruct_cmd(blank) is None
    assert settings.verify_timeout_s(env=blank) == 600.0


def test_values_are_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "GPURUN_HOME": "~/elsewhere", "GPURUN_RUNS_DIR": "out/runs", "GPURUN_SSH_OVERRIDE": "127.0.0.1:2222",
        "GPURUN_REMOTE_ROOT": "/srv/gpurun", "GPURUN_SELF_DESTRUCT_CMD": "touch /tmp/gone",
        "GPURUN_VERIFY_TIMEOUT_S": "12.5",
    }
    assert settings.home(env) == Path.home() / "elsewhere"
    assert settings.runs_dir(env=env) == tmp_path / "out" / "runs"
    assert settings.ssh_override(env) == SSHOverride("127.0.0.1", 2222, None)
    assert settings.ssh_override({"GPURUN_SSH_OVERRIDE": "h:22:ubuntu"}) == SSHOverride("h", 22, "ubuntu")
    assert settings.remote_root(env) == "/srv/gpurun"
    assert settings.self_destruct_cmd(env) == "touch /tmp/gone"
    assert settings.verify_timeout_s(env=env) == 12.5


def test_an_explicit_value_wins_over_the_environment(tmp_path: Path) -> None:
    env = {"GPURUN_RUNS_DIR": str(tmp_path / "env"), "GPURUN_VERIFY_TIMEOUT_S": "12"}
    assert settings.runs_dir(tmp_path / "flag", env=env) == tmp_path / "flag"
    assert settings.verify_timeout_s(30, env=env) == 30.0


@pytest.mark.parametrize("name, value, call", [
    ("GPURUN_SSH_OVERRIDE", "nonsense", lambda env: settings.ssh_override(env)),
    ("GPURUN_SSH_OVERRIDE", "host:port", lambda env: settings.ssh_override(env)),
    ("GPURUN_SSH_OVERRIDE", ":22", lambda env: settings.ssh_override(env)),
    ("GPURUN_SSH_OVERRIDE", "h:22:u:x", lambda env: settings.ssh_override(env)),
    ("GPURUN_VERIFY_TIMEOUT_S", "ten", lambda env: settings.verify_timeout_s(env=env)),
    ("GPURUN_VERIFY_TIMEOUT_S", "-5", lambda env: settings.verify_timeout_s(env=env)),
    ("GPURUN_VERIFY_TIMEOUT_S", "nan", lambda env: settings.verify_timeout_s(env=env)),
])
def test_a_malformed_value_is_one_line_naming_the_variable(name: str, value: str, call) -> None:
    with pytest.raises(SettingsError) as err:
        call({name: value})
    message = str(err.value)
    assert message.startswith(f"{name}={value!r}: expected ") and "\n" not in message
    assert isinstance(err.value, ValueError)  # callers that caught ValueError still do


def test_read_when_called_not_at_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPURUN_HOME", str(tmp_path / "a"))
    assert settings.home() == tmp_path / "a"
    monkeypatch.setenv("GPURUN_HOME", str(tmp_path / "b"))
    assert settings.home() == tmp_path / "b"
    monkeypatch.setenv("GPURUN_SSH_OVERRIDE", "10.0.0.1:2200")
    assert settings.ssh_override() == SSHOverride("10.0.0.1", 2200)


def test_every_gpurun_variable_the_controller_uses_is_documented() -> None:
    used = set()
    for path in (REPO / "orchestrator").glob("*.py"):
        used |= set(re.findall(r"\bGPURUN_[A-Z0-9_]+\b", path.read_text()))
    documented = set(settings.VARIABLES) | set(settings.VARIABLES_ELSEWHERE)
    assert used - documented == set()


def test_no_environment_reads_outside_settings() -> None:
    reads = re.compile(r"os\.environ|getenv\(")
    readers = {p.name for p in (REPO / "orchestrator").glob("*.py") if reads.search(p.read_text())}
    readers -= {"settings.py"}
    assert readers - NOT_YET_SWITCHED - READS_ALL_OF_THE_ENVIRONMENT == set()
    assert NOT_YET_SWITCHED <= readers, "switched to settings: drop it from NOT_YET_SWITCHED"
