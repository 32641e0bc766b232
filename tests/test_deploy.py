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


def _verify(unit_text: str, tmp_path: Path, name: str = "siptap.service",
            instance: str | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_text(unit_text)
    # A template is verified as one of its instances (siptap@lab.service), so that %i expands.
    target = tmp_path / instance if instance else path
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(target)],
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


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if line and not line.startswith(("#", " "))]


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    # A pinned base: an exact Python release on a named Debian release, or a digest; never a
    # floating tag such as python:3.11-slim.
    base = instructions[0].removeprefix("FROM ")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
    # ... and the same Python release the tests run on.
    assert base.startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}-"), base
    runs = [line for line in instructions if line.startswith("RUN ")]
    assert "RUN pip install --no-deps -r requirements.txt" in runs
    assert any("pip install --no-deps ." in line and "pip check" in line for line in runs), runs
    assert not [line for line in runs if "pip install" in line and "--no-deps" not in line], runs
    entrypoint = next(line for line in instructions if line.startswith("ENTRYPOINT "))
    cmd = next(line for line in instructions if line.startswith("CMD "))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["siptap"]
    assert json.loads(cmd.removeprefix("CMD ")) == ["run", "--config", "/etc/siptap/config.toml"]
    exposed = {port for line in instructions if line.startswith("EXPOSE ") for port in line.split()[1:]}
    assert exposed == {"5061/tcp", f"{METRICS.port}/tcp"}, exposed
    volumes = json.loads(next(line for line in instructions if line.startswith("VOLUME ")).removeprefix("VOLUME "))
    assert set(volumes) == {"/etc/siptap/certs", "/var/lib/siptap/captures"}
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
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
    for name in ("siptap.service", "siptap@.service", "siptap.sysusers", "config.toml", "Dockerfile",
                 "requirements.txt", "heplify-server", "capture_id", "node_name", "[route.reverse]", "HEALTHCHECK"):
        assert name in text, name


# -- metrics, health check, pinned dependencies, the template unit -------------------------------

METRICS = load_config(DEPLOY / "config.toml").metrics.address


def test_deploy_config_serves_metrics_beyond_the_container() -> None:
    """Inside a container only 0.0.0.0 is reachable through a published port."""
    config = load_config(DEPLOY / "config.toml")
    assert config.metrics.enabled
    assert (config.metrics.address.host, config.metrics.address.port) == ("0.0.0.0", 9464)


def healthcheck_command() -> list[str]:
    (line,) = [line for line in dockerfile_instructions() if line.startswith("HEALTHCHECK ")]
    options, exec_form = line.split(" CMD ", 1)
    assert "--interval=" in options and "--timeout=" in options and "--retries=" in options, options
    command = json.loads(exec_form)
    assert command[0] == "python" and f"127.0.0.1:{METRICS.port}/metrics" in command[-1], command
    return command


async def test_healthcheck_command_against_a_real_siptap(pki: Path, tmp_path: Path) -> None:
    """The HEALTHCHECK's command, as written, run against `siptap run` (its port moved to the one
    this test's siptap got): healthy while siptap runs, unhealthy with nothing on the port."""
    import trio

    from siptap.tools.lab.core import start_lab_core
    from tests.relay.harness import SiptapProcess, write_config

    command = healthcheck_command()
    command[0] = sys.executable  # the image's python is this one (the base is pinned to it)

    def run(port: int) -> subprocess.CompletedProcess[str]:
        moved = [*command[:-1], command[-1].replace(f"127.0.0.1:{METRICS.port}", f"127.0.0.1:{port}")]
        return subprocess.run(moved, capture_output=True, text=True, timeout=30)

    async with trio.open_nursery() as nursery:
        _core, core_port = await start_lab_core(nursery, pki)
        top = '[metrics]\nenabled = true\naddress = "127.0.0.1:0"\n'
        siptap = SiptapProcess(write_config(tmp_path, pki, cores=[core_port], top=top))
        await siptap.start(nursery)
        await siptap.port()
        port = int((await siptap.wait_for("metrics_up"))[0]["port"])
        await siptap.wait_for("workers_ready")
        healthy = await trio.to_thread.run_sync(run, port)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert healthy.returncode == 0, healthy.stderr
    gone = run(port)  # siptap stopped: nothing answers there now
    assert gone.returncode != 0


def _runtime_closure() -> dict[str, str]:
    """Every distribution siptap needs at run time (its [project] dependencies, recursively,
    markers evaluated here), by normalised name, with the installed version."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    todo = ["siptap"]
    while todo:
        dist = metadata.distribution(todo.pop())
        name = canonicalize_name(dist.metadata["Name"])
        if name in found:
            continue
        found[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    del found["siptap"]
    return found


def test_requirements_pin_the_whole_runtime_closure_exactly() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (DEPLOY / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"not pinned exactly: {line}"
            pins[canonicalize_name(requirement.name)] = spec.version
    closure = _runtime_closure()
    # Complete (the image installs with --no-deps), nothing extra, and the versions tested here.
    assert sorted(pins) == sorted(closure)
    assert pins == closure, {name: (pins[name], closure[name]) for name in pins if pins[name] != closure[name]}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for text in declared:
        requirement = Requirement(text)
        assert pins[canonicalize_name(requirement.name)] in requirement.specifier, text


TEMPLATE = DEPLOY / "siptap@.service"
# What differs between siptap.service and its template: the config file and the folders.
TEMPLATE_CHANGES = {
    "Description=siptap inline TLS-terminating SIP proxy": "Description=siptap inline TLS-terminating SIP proxy (instance %i)",
    f"ExecStartPre={INSTALLED_SIPTAP} check --config /etc/siptap/config.toml":
        f"ExecStartPre={INSTALLED_SIPTAP} check --config /etc/siptap/%i.toml",
    f"ExecStart={INSTALLED_SIPTAP} run --config /etc/siptap/config.toml":
        f"ExecStart={INSTALLED_SIPTAP} run --config /etc/siptap/%i.toml",
    "StateDirectory=siptap siptap/captures": "StateDirectory=siptap/%i siptap/%i/captures",
    "WorkingDirectory=/var/lib/siptap": "WorkingDirectory=/var/lib/siptap/%i",
    "ReadWritePaths=/var/lib/siptap/captures": "ReadWritePaths=/var/lib/siptap/%i/captures",
}


def _settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith(("#", ";"))]


def test_template_unit_is_the_service_per_instance() -> None:
    """siptap@.service is siptap.service line for line (the same hardening), except the config
    path and the folders, which carry the instance name."""
    expected = [TEMPLATE_CHANGES.get(line, line) for line in _settings(UNIT.read_text())]
    assert _settings(TEMPLATE.read_text()) == expected
    assert all(new in expected for new in TEMPLATE_CHANGES.values())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (package systemd)")
def test_template_unit_verifies_as_an_instance(tmp_path: Path) -> None:
    text = TEMPLATE.read_text()
    assert text.count(INSTALLED_SIPTAP) == 2
    copy = text.replace(INSTALLED_SIPTAP, str(_siptap_executable(tmp_path)))
    result = _verify(copy, tmp_path, "siptap@.service", instance="siptap@lab.service")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    broken = _verify(copy.replace("NoNewPrivileges", "NoNewPrivilege"), tmp_path, "siptap@.service",
                     instance="siptap@lab.service")
    assert "NoNewPrivilege" in broken.stderr, broken.stderr


def test_second_instance_recipe_of_the_deploy_readme(tmp_path: Path) -> None:
    """The README's sed line, run on the shipped config, gives a valid second instance that
    shares nothing with the first: listen port, metrics port, HEP identity, captures folder."""
    text = (DEPLOY / "README.md").read_text()
    recipe = text.split("sed -e ", 1)[1].split("/etc/siptap/config.toml >", 1)[0]
    command = "sed -e " + recipe.replace("\\\n", " ") + f"{DEPLOY / 'config.toml'}"
    second = tmp_path / "customer-b.toml"
    second.write_text(subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout)
    first, other = load_config(DEPLOY / "config.toml"), load_config(second)
    (a,), (b,) = first.routes, other.routes
    assert (b.name, b.listen[0].port, b.cores) == ("customer-b", 5071, a.cores)
    assert (other.metrics.address.port, other.mirror.hep[0].capture_id, other.mirror.hep[0].node_name) == \
        (9465, 2002, "siptap-2")
    captures = Path("/var/lib/siptap/customer-b/captures")
    mirror = other.mirror
    assert mirror.keylog is not None and mirror.pcap is not None and mirror.srtp_keys is not None
    assert {mirror.keylog.path.parent, mirror.pcap.directory, mirror.srtp_keys.path.parent} == {captures}
