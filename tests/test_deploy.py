"""deploy/: the systemd unit, the deployment config and the Dockerfile, checked as far as this
machine can check them.

* `systemd-analyze verify` parses the unit the way systemd would (unknown keys, bad values,
  missing executables). It needs no running systemd, but it insists that the ExecStart binaries
  exist, and the unit names the install location /opt/siptap/bin/siptap, which does not exist
  here. So the test verifies a temporary copy in which only that path is replaced by this
  virtual environment's real `siptap` console script; every other line is verified as shipped.
  verify reports unknown keys and unparsable values as warnings on stderr with exit status 0,
  so the test requires an empty stderr, and shows on a broken copy that such warnings are seen.
* Without systemd-analyze that test skips; the structural checks below (hardening keys present
  with the intended values) run everywhere.
* No Docker engine runs on the project's machines: the Dockerfile is checked statically.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from siptap.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "siptap.service"
INSTALLED_SIPTAP = "/opt/siptap/bin/siptap"


def unit_entries(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: sections, keys that may repeat (values accumulate), # comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return unit_entries(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values is not None, f"{key}= missing from {UNIT.name}"
    assert len(values) == 1, f"{key}= given {len(values)} times"
    return values[0]


def _siptap_executable(tmp_path: Path) -> Path:
    real = Path(sys.executable).parent / "siptap"
    if real.exists():
        return real
    stub = tmp_path / "siptap"  # not installed as a script (python -m use): an executable stand-in
    stub.write_text(f"#!/bin/sh\nexec {sys.executable} -m siptap \"$@\"\n")
    stub.chmod(0o755)
    return stub


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "siptap.service"
    path.write_text(unit_text)
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (package systemd)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert text.count(INSTALLED_SIPTAP) == 2  # ExecStartPre and ExecStart, nothing else rewritten
    copy = text.replace(INSTALLED_SIPTAP, str(_siptap_executable(tmp_path)))
    result = _verify(copy, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    # The check has teeth: a misspelt key and a bad value are reported.
    broken = copy.replace("ProtectSystem=strict", "ProtectSystem=bogus").replace("NoNewPrivileges", "NoNewPrivilege")
    warnings = _verify(broken, tmp_path).stderr
    assert "NoNewPrivilege" in warnings and "bogus" in warnings, warnings


def test_unit_hardening(service: dict[str, list[str]]) -> None:
    expected = {
        "User": "siptap",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "ReadWritePaths": "/var/lib/siptap/captures",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter": "@system-service",
        "KillSignal": "SIGTERM",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert one(service, key) == value, key
    assert "siptap/captures" in one(service, "StateDirectory").split()
    assert "DynamicUser" not in service or one(service, "DynamicUser") == "no"


def test_unit_runs_check_before_run_on_the_etc_config(service: dict[str, list[str]]) -> None:
    assert one(service, "ExecStartPre") == f"{INSTALLED_SIPTAP} check --config /etc/siptap/config.toml"
    assert one(service, "ExecStart") == f"{INSTALLED_SIPTAP} run --config /etc/siptap/config.toml"


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match, value
    return float(match[1]) * (60 if match[2] == "min" else 1)


def test_stop_timeout_outlasts_the_drain(service: dict[str, list[str]]) -> None:
    stop = _seconds(one(service, "TimeoutStopSec"))
    for config in (DEPLOY / "config.toml", ROOT / "config.toml"):
        drain = tomllib.loads(config.read_text()).get("drain_timeout", 30.0)
        assert stop > drain + 5, (config, stop, drain)


def test_deploy_config_loads_and_writes_only_captures() -> None:
    config = load_config(DEPLOY / "config.toml")
    mirror = config.mirror
    writable = Path("/var/lib/siptap/captures")
    written = [mirror.keylog.path, mirror.pcap.directory, mirror.srtp_keys.path]  # type: ignore[union-attr]
    written += [j.path for j in mirror.jsonl if j.path is not None]
    assert all(p is not None and (p == writable or writable in p.parents) for p in written), written
    hep = mirror.hep[0]
    assert hep.address.port == 9060 and hep.node_name and hep.capture_id
    assert config.log.key_material is False
    assert config.routes[0].listen[0].host == "0.0.0.0"


def test_deploy_config_reverse_example_is_valid(tmp_path: Path) -> None:
    """The commented [route.reverse] block, uncommented, is a valid config."""
    lines = (DEPLOY / "config.toml").read_text().splitlines()
    start = lines.index("# [route.reverse]")
    out = list(lines)
    for index in range(start, len(lines)):
        if not lines[index].startswith("# "):
            break
        out[index] = lines[index][2:]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(out) + "\n")
    reverse = load_config(path).routes[0].reverse
    assert reverse is not None and reverse.listen[0].port == 5063
    assert reverse.customer_tls.server_name == "esbc1.customer.example"


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert instructions[0] == "FROM python:3.11-slim"
    entrypoint = next(line for line in instructions if line.startswith("ENTRYPOINT "))
    cmd = next(line for line in instructions if line.startswith("CMD "))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["siptap"]
    assert json.loads(cmd.removeprefix("CMD ")) == ["run", "--config", "/etc/siptap/config.toml"]
    assert "EXPOSE 5061/tcp" in instructions
    volumes = json.loads(next(line for line in instructions if line.startswith("VOLUME ")).removeprefix("VOLUME "))
    assert set(volumes) == {"/etc/siptap/certs", "/var/lib/siptap/captures"}
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any("pip install ." in line for line in instructions)
    # Everything COPY'd exists in the repository (the build context is the repository root).
    for line in instructions:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    # The entry point is the console script the package installs.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["siptap"] == "siptap.cli:main"


def test_deploy_readme_names_the_files() -> None:
    text = (DEPLOY / "README.md").read_text()
    for name in ("siptap.service", "siptap.sysusers", "config.toml", "Dockerfile", "heplify-server",
                 "capture_id", "node_name", "[route.reverse]"):
        assert name in text, name
