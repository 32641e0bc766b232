"""The README's troubleshooting section, checked against a real log.

One `siptap run` meets the failures the section's jq one-liners look for: E-SBCs offering only
ECDHE suites, only TLS 1.3, no suite in common, plain SIP on the TLS port; certificates from an
unknown CA, expired, missing, or not on the allow-list; a route whose core does not listen; a HEP
collector that is down; and one good call. Its stdout, as written, is the log file.

Then every ``jq`` line of the README's "Troubleshooting" section runs, as written there, over that
file (``bash -o pipefail``: some lines pipe into sort), and its output is checked. The two
values a line needs from a particular log are substituted: the connection id ``3fa2c1-17``
(the good call's connection here) and the Call-ID prefix ``lab-`` (the good call's). A jq line
added to the README without a check here fails :func:`test_every_readme_jq_line_is_checked`.

The same log feeds the console format's test: its real ``sip`` and ``handshake_done`` events,
rendered as ``[log] format = "console"`` renders them.
"""

from __future__ import annotations

import io
import json
import re
import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from siptap import log as siptap_log
from siptap.config import LogSettings
from siptap.log import configure, get_logger
from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession
from tests.integration.capture import require
from tests.integration.peers import free_port
from tests.relay.harness import SiptapProcess
from tests.tls.helpers import customer_client_context

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_CONN = "3fa2c1-17"
EXAMPLE_CALL_PREFIX = '"lab-"'

# The failures the tour provokes, as (client certificate, context options) -> reason.
FAILURES = {
    "ecdhe_only_client": dict(ciphers="ECDHE-RSA-AES128-GCM-SHA256", maximum=ssl.TLSVersion.TLSv1_2),
    "no_shared_cipher": dict(ciphers="AES128-CCM", maximum=ssl.TLSVersion.TLSv1_2),
    "tls13_only_client": dict(minimum=ssl.TLSVersion.TLSv1_3),
    "unknown_ca": dict(cert="foreign"),
    "certificate_expired": dict(cert="expired"),
    "not_allowed": dict(cert="other-customer"),
    "no_client_certificate": dict(cert=None),
}


@dataclass
class Tour:
    log: Path
    events: list[dict[str, Any]]
    conn: str  # the good call's connection
    call_id: str


def _config(tmp: Path, pki: Path, core_port: int, dead_core: int, dead_hep: int) -> Path:
    route = """
[route.customer]
cert = "{pki}/proxy-server.pem"
key = "{pki}/proxy-server.key"
client_ca = "{pki}/ca.pem"
allow = ["cn:customer"]

[[route.core]]
address = "127.0.0.1:{core}"
server_name = "localhost"

[route.core_tls]
cert = "{pki}/proxy-client.pem"
key = "{pki}/proxy-client.key"
ca = "{pki}/ca.pem"

[route.limits]
handshake_timeout = 5.0
connect_timeout = 2.0
"""
    path = tmp / "siptap.toml"
    path.write_text(f"""
drain_timeout = 5.0
[log]
format = "json"
key_material = true   # the console test shows the key-log lines under handshake_done

[[route]]
name = "lab"
listen = "127.0.0.1:0"
{route.format(pki=pki, core=core_port)}

[[route]]
name = "dead-core"
listen = "127.0.0.1:0"
{route.format(pki=pki, core=dead_core)}

[mirror]
legs = "customer"
[[mirror.hep]]
address = "127.0.0.1:{dead_hep}"
transport = "tcp"
[mirror.keylog]
path = "{tmp}/keys.log"
""")
    return path


async def _refused(port: int, ctx: ssl.SSLContext) -> None:
    """A handshake siptap refuses; the client's own error is of no interest here."""
    with pytest.raises((ssl.SSLError, trio.BrokenResourceError, OSError, EOFError)):
        session = await CustomerSession.connect("127.0.0.1", port, ctx)
        await session.options()  # a TLS 1.3 client learns of the refusal only when it reads


async def _run_tour(pki: Path, tmp: Path) -> Tour:
    async with trio.open_nursery() as nursery:
        _core, core_port = await start_lab_core(nursery, pki)
        siptap = SiptapProcess(_config(tmp, pki, core_port, free_port(), free_port()))
        await siptap.start(nursery)
        ports = {e["route"]: int(e["port"]) for e in await siptap.wait_for("listener_up", count=2)}
        good = await CustomerSession.connect("127.0.0.1", ports["lab"], customer_client_context(pki))
        assert await good.call() == ["100", "180", "200", "200"]
        await good.aclose()
        for options in FAILURES.values():
            await _refused(ports["lab"], customer_client_context(pki, **options))  # type: ignore[arg-type]
        with socket.create_connection(("127.0.0.1", ports["lab"])) as plain:  # plain SIP on the TLS port
            plain.sendall(b"OPTIONS sip:core SIP/2.0\r\nContent-Length: 0\r\n\r\n")
            plain.recv(100)
        with pytest.raises((ssl.SSLError, trio.BrokenResourceError, OSError, EOFError)):
            lost = await CustomerSession.connect("127.0.0.1", ports["dead-core"], customer_client_context(pki))
            await lost.options()
        await siptap.wait_for("no_upstream")
        await siptap.wait_for("handshake_failed", count=len(FAILURES) + 1)
        await siptap.wait_for("mirror_events_dropped")
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    log = tmp / "siptap.log"
    log.write_bytes(b"".join(line + b"\n" for line in siptap.lines))
    closed = [e for e in siptap.events if e.get("event") == "handshake_done" and e.get("leg") == "customer"]
    sip = [e for e in siptap.events if e.get("event") == "sip" and e.get("method") == "INVITE"]
    return Tour(log, siptap.events, closed[0]["conn"], sip[0]["call_id"])


@pytest.fixture(scope="module")
def tour(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Tour:
    return trio.run(_run_tour, pki, tmp_path_factory.mktemp("tour"))


def readme_jq_lines() -> list[str]:
    """The jq command lines of the README's "Troubleshooting" section, as written."""
    text = README.read_text()
    section = text.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("jq ")]


def run_jq(line: str, tour: Tour) -> list[str]:
    command = (line.replace("siptap.log", str(tour.log)).replace(EXAMPLE_CONN, tour.conn)
               .replace(EXAMPLE_CALL_PREFIX, json.dumps(tour.call_id[:12])))
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (line, result.stderr)
    lines = result.stdout.splitlines()
    assert lines, f"no output: {line}"
    return lines


def objects(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def _summary(lines: list[str], tour: Tour) -> None:
    counted = {tuple(line.split(None, 1)[1].split("\t")): int(line.split()[0]) for line in lines}
    for reason in (*FAILURES, "not_tls"):
        assert counted[("handshake_failed", reason)] == 1, counted
    assert counted[("upstream_failed", "connect_refused")] >= 1, counted
    assert counted[("no_upstream", "-")] == 1, counted
    assert counted[("mirror_events_dropped", "-")] >= 1, counted
    assert [int(line.split()[0]) for line in lines] == sorted((int(line.split()[0]) for line in lines), reverse=True)


def _failed(lines: list[str], tour: Tour) -> None:
    rows = objects(lines)
    assert sorted(r["reason"] for r in rows) == sorted([*FAILURES, "not_tls"])
    assert all(r["peer"].startswith("127.0.0.1:") and r["timestamp"].endswith("Z") and r["detail"] for r in rows)


def _not_allowed(lines: list[str], tour: Tour) -> None:
    (row,) = objects(lines)
    assert "other-customer" in row["detail"], row


def _offers(lines: list[str], tour: Tour) -> None:
    rows = {r["reason"]: r for r in objects(lines)}
    assert rows["tls13_only_client"]["versions"] == ["TLSv1.3"]
    suites = [s for s in rows["ecdhe_only_client"]["suites"] if not s.endswith("_SCSV")]
    assert suites == ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"], rows["ecdhe_only_client"]
    assert "not_tls" not in rows  # plain SIP has no ClientHello


def _core_side(lines: list[str], tour: Tour) -> None:
    rows = objects(lines)
    failed = [r for r in rows if r["event"] == "upstream_failed"]
    assert failed and all((r["stage"], r["reason"]) == ("tcp", "connect_refused") for r in failed), failed
    assert [r["event"] for r in rows][-1] == "no_upstream" and "no core reachable" in rows[-1]["detail"]


def _mirror(lines: list[str], tour: Tour) -> None:
    rows = objects(lines)
    dropped = [r for r in rows if r["event"] == "mirror_events_dropped"]
    assert dropped and all(r["sink"].startswith("hep") and r["dropped"] > 0 for r in dropped), rows


def _certificates(lines: list[str], tour: Tour) -> None:
    rows = {(r["conn"], r["leg"]): r for r in objects(lines)}
    customer, core = rows[(tour.conn, "customer")], rows[(tour.conn, "core")]
    assert (customer["version"], customer["key_exchange"]) == ("TLSv1.2", "RSA")
    assert "CN=customer" in customer["peer"] and customer["not_after"] > "2026"
    assert "CN=core" in core["peer"] or "core" in core["peer"], core


def _call(lines: list[str], tour: Tour) -> None:
    rows = objects(lines)
    assert [r["method"] or r["status"] for r in rows] == ["INVITE", 100, 180, 200, "ACK", "BYE", 200]


def _connection(lines: list[str], tour: Tour) -> None:
    rows = objects(lines)
    assert [r["timestamp"] for r in rows] == sorted(r["timestamp"] for r in rows)
    events = [r["event"] for r in rows]
    assert events[0] == "connection_accepted" and events[-1] in ("connection_closed", "connection_observed")
    assert {"handshake_done", "sip", "connection_closed"} <= set(events)


# A check per README jq line, keyed by a fragment only that line has.
CHECKS: dict[str, Callable[[list[str], Tour], None]] = {
    "@tsv": _summary,
    "{timestamp, peer, reason, detail}": _failed,
    '.reason == "not_allowed"': _not_allowed,
    ".client_offer.versions": _offers,
    '.event == "no_upstream"': _core_side,
    "mirror_(events_dropped": _mirror,
    ".peer_certificate.subject": _certificates,
    'startswith("lab-")': _call,
    "--arg conn": _connection,
}


def _check_for(line: str) -> Callable[[list[str], Tour], None]:
    found = [check for fragment, check in CHECKS.items() if fragment in line]
    assert len(found) == 1, f"README jq line without exactly one check: {line}"
    return found[0]


def test_every_readme_jq_line_is_checked() -> None:
    lines = readme_jq_lines()
    assert len(lines) == len(CHECKS), lines
    for line in lines:
        _check_for(line)


@require("jq")  # skips without jq, except in CI, where a missing peer is an error
@pytest.mark.parametrize("line", readme_jq_lines())
def test_readme_jq_line_over_a_real_log(line: str, tour: Tour) -> None:
    _check_for(line)(run_jq(line, tour), tour)


def test_console_format_renders_real_events_readably(tour: Tour) -> None:
    """The good call's events, logged again through the console renderer."""
    stream = io.StringIO()
    # configure() is process-wide: put back what was there, or later tests in this process
    # would log into this closed writer (and a leak test would count the lines it keeps).
    saved_structlog, saved_log = structlog.get_config(), dict(siptap_log._configured)
    writer = configure(LogSettings(format="console", key_material=True), stream)
    try:
        for event in (e for e in tour.events if e.get("conn") == tour.conn):
            fields = {k: v for k, v in event.items() if k not in ("event", "level", "timestamp", "conn", "route")}
            get_logger().bind(conn=event["conn"], route=event.get("route")).info(event["event"], **fields)
    finally:
        writer.close()
        structlog.configure(**saved_structlog)
        siptap_log._configured.clear()
        siptap_log._configured.update(saved_log)
    lines = stream.getvalue().splitlines()
    json_sizes = [len(json.dumps(e)) for e in tour.events if e.get("event") == "handshake_done"]
    assert max(json_sizes) > 1000  # what the console line replaces
    done = [line for line in lines if " handshake_done " in line]
    assert len(done) == 2 and all(len(line) < 450 for line in done), done
    customer = next(line for line in done if "leg=customer" in line)
    for fragment in ("leg=customer version=TLSv1.2 cipher=", "key_exchange=RSA cert='O=siptap lab,CN=customer'",
                     "issuer='O=siptap lab,CN=siptap lab CA' expires=20", f"conn={tour.conn}"):
        assert fragment in customer, customer
    # The key-log lines (key_material = true) follow, indented, as a key log takes them.
    after = lines[lines.index(customer) + 1]
    assert after.startswith("    CLIENT_RANDOM ") and len(after.split()) == 3, after
    sip = [line for line in lines if " sip " in line]
    assert len(sip) == 7
    # time, level, event, then the method or status, then the Call-ID
    invite = sip[0].split()
    assert invite[1:4] == ["info", "sip", "INVITE"] and invite[4] == f"call_id={tour.call_id}", sip[0]
    ok = next(line for line in sip if " sip 200 OK " in line)
    assert ok.split()[5] == f"call_id={tour.call_id}", ok
    assert sip[0].index("call_id=") < sip[0].index("conn=")


def test_the_troubleshooting_table_covers_every_failure_reason() -> None:
    """Every reason siptap can log for a failed handshake or dial has a row to look it up in."""
    from siptap.sansio.handshake import FailureReason

    section = README.read_text().split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| "))
    upstream = (Path(__file__).resolve().parents[2] / "proxy/siptap/relay/upstream.py").read_text()
    dial_reasons = set(re.findall(r'"(connect_\w+|no_route|name_unresolved|out_of_descriptors)"', upstream))
    assert {"connect_refused", "connect_timeout", "out_of_descriptors", "connect_failed"} <= dial_reasons
    missing = [reason for reason in [*(r.value for r in FailureReason), *sorted(dial_reasons)]
               if f"`{reason}`" not in table]
    assert missing == [], f"README Troubleshooting has no row for {missing}"
