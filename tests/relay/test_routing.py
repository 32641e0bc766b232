"""Many customers on one listen address, routed by who they are: `siptap run` as a process,
real TLS customers (the standard library's ssl) and real TLS cores, over loopback sockets."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cryptography import x509

from siptap.tls.identity import sha256_fingerprint
from siptap.tools.lab.core import start_lab_core
from siptap.tools.lab.customer import CustomerSession, customer_context
from siptap.tools.pki import issue_leaf
from tests.integration.peers import free_port
from tests.relay.harness import SiptapProcess
from tests.relay.test_metrics import scrape


@pytest.fixture(scope="module")
def certs(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's lab PKI plus three customers of the lab CA (acme, initech, stranger), one
    of a partner's CA (globex), a second server certificate for SNI special.example, and a
    client CA bundle trusting both CAs."""
    directory = tmp_path_factory.mktemp("routes") / "certs"
    shutil.copytree(pki, directory)
    for name in ("acme", "initech", "stranger"):
        issue_leaf(directory, name, usage="client", sans=[f"{name}.example"])
    issue_leaf(directory, "globex", usage="client", self_ca="partner-ca")
    issue_leaf(directory, "special-server", usage="server", sans=["special.example"])
    (directory / "clients.pem").write_bytes((directory / "ca.pem").read_bytes()
                                             + (directory / "partner-ca.pem").read_bytes())
    return directory


def route(name: str, port: int, core: int, certs: Path, *, match: str = "", cert: str = "proxy-server") -> str:
    return f"""
[[route]]
name = "{name}"
listen = "127.0.0.1:{port}"
core = {{ address = "127.0.0.1:{core}", server_name = "localhost" }}
{f"match = {{ {match} }}" if match else ""}
[route.customer]
cert = "{certs}/{cert}.pem"
key = "{certs}/{cert}.key"
client_ca = "{certs}/clients.pem"
[route.core_tls]
cert = "{certs}/proxy-client.pem"
key = "{certs}/proxy-client.key"
ca = "{certs}/ca.pem"
"""


def write(path: Path, *routes: str, top: str = "") -> Path:
    path.write_text(f'drain_timeout = 5.0\n{top}\n[log]\nformat = "json"\nlevel = "debug"\n' + "".join(routes))
    return path


async def options_via(port: int, certs: Path, cert: str, server_name: str = "localhost") -> CustomerSession:
    """A customer that connects, gets a 200 to OPTIONS (so it reached a core), and stays open."""
    session = await CustomerSession.connect("127.0.0.1", port, customer_context(certs, cert=cert), server_name)
    assert (await session.options()).status_code == 200
    return session


def common_name(session: CustomerSession) -> str:
    """The CN of the server certificate the customer verified."""
    peer = session.stream.getpeercert()
    assert peer is not None
    return str(dict(x[0] for x in peer["subject"])["commonName"])


@pytest.mark.parametrize("workers", [1, 2])
async def test_customers_on_one_port_reach_their_cores_and_a_stranger_is_refused(certs: Path, tmp_path: Path,
                                                                                  workers: int) -> None:
    """Also with two workers sharing the address (SO_REUSEPORT): each routes on its own table,
    whichever takes the connection, and the supervisor's scrape sums their counters."""
    port = free_port()
    partner_ca = x509.load_pem_x509_certificate((certs / "partner-ca.pem").read_bytes())
    initech = x509.load_pem_x509_certificate((certs / "initech.pem").read_bytes())
    async with trio.open_nursery() as nursery:
        core_a, port_a = await start_lab_core(nursery, certs)
        core_b, port_b = await start_lab_core(nursery, certs)
        config = write(
            tmp_path / "siptap.toml",
            route("acme", port, port_a, certs, match='client = ["cn:acme"]'),
            # A partner CA's customers by issuer (as openssl prints it), one of ours by fingerprint.
            route("partners", port, port_b, certs, match=f'client = ["issuer:{_openssl_oneline(partner_ca.subject)}", '
                                                          f'"sha256:{sha256_fingerprint(initech)}"]'),
            # Whoever names special.example gets this route's certificate and core, whoever it is.
            route("special", port, port_b, certs, match='sni = ["special.example"]', cert="special-server"),
            top=f'workers = {workers}\n[metrics]\nenabled = true\naddress = "127.0.0.1:0"\n',
        )
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        assert await siptap.port() == port
        acme = await options_via(port, certs, "acme")
        globex = await options_via(port, certs, "globex")
        initech_session = await options_via(port, certs, "initech")
        assert (core_a.connections, core_b.connections) == (1, 2)
        assert {common_name(s) for s in (acme, globex, initech_session)} == {"proxy-server"}

        # SNI picks the route and the server certificate, which the customer verified against
        # special.example (check_hostname): the same customer certificate reaches core B now.
        special = await options_via(port, certs, "acme", server_name="special.example")
        assert common_name(special) == "special-server"
        assert (core_a.connections, core_b.connections) == (1, 3)

        # A customer no route matches: its handshake completes, then siptap refuses it.
        stranger = await CustomerSession.connect("127.0.0.1", port, customer_context(certs, cert="stranger"))
        refused = (await siptap.wait_for("connection_refused", reason="no_route"))[0]
        with trio.fail_after(10):
            assert await stranger.stream.receive_some() == b""  # close_notify, nothing relayed
        # Counted with the other refusals, under the listener's name (no route was chosen);
        # the handshakes that were routed, under their routes.
        metrics_port = int((await siptap.wait_for("metrics_up"))[0]["port"])
        wanted = {("siptap_connections_refused_total", (("reason", "no_route"), ("route", "acme|partners|special"))): 1.0}
        wanted.update({("siptap_handshakes_total", (("leg", "customer"), ("result", "ok"),
                                                    ("route", name))): count
                       for name, count in (("acme", 1.0), ("partners", 2.0), ("special", 1.0))})
        with trio.fail_after(10):
            while {key: (await scrape(metrics_port)).get(key) for key in wanted} != wanted:
                await trio.sleep(0.2)
        for session in (acme, globex, initech_session, special):
            await session.aclose()
        await siptap.wait_for("connection_closed", count=5)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()

    assert (core_a.connections, core_b.connections) == (1, 3)  # never sent to some default core
    assert refused["sni"] == "localhost"
    assert refused["identity"]["common_name"] == "stranger"
    assert refused["identity"]["sans"] == ["DNS:stranger.example"]
    assert refused["identity"]["issuer"] == "O=siptap lab,CN=siptap lab CA"
    assert refused["route"] == "acme|partners|special" and refused["leg"] == "customer"
    conn = refused["conn"]
    assert siptap.find("connection_closed", conn=conn)[0]["reason"] == "refused: no_route"
    # Each relayed connection's lines after the handshake carry the route it was given.
    closed = {e["conn"]: e["route"] for e in siptap.find("connection_closed") if e["conn"] != conn}
    assert sorted(closed.values()) == ["acme", "partners", "partners", "special"]
    done = [e for e in siptap.find("handshake_done", leg="customer") if e["conn"] != conn]
    assert sorted((e["route"], e["sni"]) for e in done) == [
        ("acme", "localhost"), ("partners", "localhost"), ("partners", "localhost"), ("special", "special.example")]


async def test_sighup_reroutes_new_connections_and_a_live_one_keeps_its_core(certs: Path, tmp_path: Path) -> None:
    port = free_port()
    async with trio.open_nursery() as nursery:
        core_a, port_a = await start_lab_core(nursery, certs)
        core_b, port_b = await start_lab_core(nursery, certs)
        config = write(tmp_path / "siptap.toml",
                       route("acme", port, port_a, certs, match='client = ["cn:acme"]'),
                       route("rest", port, port_b, certs))
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        await siptap.port()
        live = await options_via(port, certs, "acme")
        assert (core_a.connections, core_b.connections) == (1, 0)
        # acme moves to core B, and a route for initech appears on the same address.
        write(config, route("acme", port, port_b, certs, match='client = ["cn:acme"]'),
              route("initech", port, port_a, certs, match='client = ["cn:initech"]'),
              route("rest", port, port_b, certs, match='client = ["cn:globex"]'),
              route("elsewhere", free_port(), port_a, certs))  # a new address: needs a restart
        siptap.signal(signal.SIGHUP)
        await siptap.wait_for("reloaded")
        fresh = await options_via(port, certs, "acme")
        assert (core_a.connections, core_b.connections) == (1, 1)
        await (await options_via(port, certs, "initech")).aclose()
        assert (core_a.connections, core_b.connections) == (2, 1)
        # The live connection still goes where it went: core A's first connection.
        before = len(core_a.received)
        assert (await live.options()).status_code == 200
        assert len(core_a.received) == before + 1
        # The catch-all is gone: who matches nothing now is refused.
        stranger = await CustomerSession.connect("127.0.0.1", port, customer_context(certs, cert="stranger"))
        await siptap.wait_for("connection_refused", reason="no_route")
        await stranger.aclose()
        for session in (live, fresh):
            await session.aclose()
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert not siptap.find("reload_failed")
    assert [e["routes"] for e in siptap.find("reload_routes_added")] == [["elsewhere"]]
    assert sorted(e["route"] for e in siptap.find("connection_closed") if e.get("reason") != "refused: no_route") \
        == ["acme", "acme", "initech"]


@pytest.mark.parametrize("workers", [1, 2])
async def test_listener_series_follow_a_reload(certs: Path, tmp_path: Path, workers: int) -> None:
    """A listener's own series (connections accepted and open) carry the route names of the
    config in force: after a SIGHUP that adds a route to a shared listener, or renames the one
    route of another, new connections count under the new names; the old names' series keep
    their values (a counter never goes back) and their open-connection gauge drains to 0."""
    shared, solo = free_port(), free_port()
    top = f'workers = {workers}\n[metrics]\nenabled = true\naddress = "127.0.0.1:0"\n'
    async with trio.open_nursery() as nursery:
        core, core_port = await start_lab_core(nursery, certs)
        config = write(tmp_path / "siptap.toml",
                       route("acme", shared, core_port, certs, match='client = ["cn:acme"]'),
                       route("rest", shared, core_port, certs), route("solo", solo, core_port, certs), top=top)
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        await siptap.wait_for("workers_ready")
        metrics_port = int((await siptap.wait_for("metrics_up"))[0]["port"])
        # Open across the reload: its gauge is decremented under the name it was counted under.
        live = await options_via(shared, certs, "acme")
        await (await options_via(solo, certs, "acme")).aclose()
        write(config, route("acme", shared, core_port, certs, match='client = ["cn:acme"]'),
              route("initech", shared, core_port, certs, match='client = ["cn:initech"]'),
              route("rest", shared, core_port, certs), route("trunk", solo, core_port, certs), top=top)
        siptap.signal(signal.SIGHUP)
        await siptap.wait_for("reloaded", count=workers)
        for port in (shared, solo):
            await (await options_via(port, certs, "initech")).aclose()
        await live.aclose()
        await siptap.wait_for("connection_closed", count=4)
        wanted = {}
        for name, total in (("acme|rest", 1.0), ("acme|initech|rest", 1.0), ("solo", 1.0), ("trunk", 1.0)):
            labels = (("leg", "customer"), ("route", name))
            wanted[("siptap_connections_total", labels)] = total
            wanted[("siptap_connections_active", labels)] = 0.0
        with trio.move_on_after(10):  # the workers copy their values into the shared files
            while (got := {key: (await scrape(metrics_port)).get(key) for key in wanted}) != wanted:
                await trio.sleep(0.2)
        assert got == wanted
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    assert not siptap.find("reload_failed") and not siptap.find("reload_route_missing")
    assert sorted(e["route"] for e in siptap.find("connection_closed")) == ["acme", "initech", "solo", "trunk"]


def test_check_refuses_routes_that_cannot_share_an_address(certs: Path, tmp_path: Path) -> None:
    port = free_port()  # check binds it for an instant
    good = write(tmp_path / "good.toml", route("acme", port, 5062, certs, match='client = ["cn:acme"]'),
                 route("globex", port, 5063, certs, match='sni = ["special.example"]', cert="special-server"))
    result = subprocess.run([sys.executable, "-m", "siptap", "check", "--config", str(good)],
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f"{good}: OK: acme (127.0.0.1:{port} -> 127.0.0.1:5062), "
                             f"globex (127.0.0.1:{port} -> 127.0.0.1:5063)\n")
    config = write(tmp_path / "shared.toml",
                   route("acme", port, 5062, certs, match='client = ["cn:acme"]'),
                   route("globex", port, 5062, certs).replace("[route.core_tls]",
                                                              'key_exchange = "any"\n[route.core_tls]'))
    result = subprocess.run([sys.executable, "-m", "siptap", "check", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"siptap: error: {config}: route[1].customer.key_exchange (route 'globex'): 'any' here, 'rsa' in route 'acme': routes sharing "
        f"127.0.0.1:{port} must agree on it (TLS settles it before the SNI or the client certificate can pick a route)"]


def _openssl_oneline(name: x509.Name) -> str:
    """A name as `openssl x509 -noout -issuer` prints it: X.509 order, `TYPE = value, ...`."""
    return ", ".join(f"{attr.rfc4514_attribute_name} = {attr.value}" for attr in name)



async def _read_jsonl(listener: trio.socket.SocketType, lines: list[dict]) -> None:
    # Imported here: the e2e module pulls in the capture helpers, which only this test needs.
    from tests.integration.test_mirror_e2e import accept_jsonl
    await accept_jsonl(listener, lines)


async def test_a_routes_mirror_legs_reach_the_sinks_and_follow_a_reload(certs: Path, tmp_path: Path) -> None:
    """``mirror_legs`` of a route widens or narrows what [mirror] legs says, at every sink (the
    fan-out's leg filter must not undo it), and a SIGHUP that changes it applies to the next
    connections (the mirror process reloads its route table too)."""
    port = free_port()
    sock_path = tmp_path / "jsonl.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(str(sock_path))
    listener.listen()
    jsonl: list[dict] = []
    top = f'[mirror]\nlegs = "customer"\n[[mirror.jsonl]]\ntransport = "unix"\npath = "{sock_path}"\n'

    def routes(acme_legs: str, rest_legs: str | None) -> tuple[str, ...]:
        def legs(text: str, value: str | None) -> str:
            return text if value is None else text.replace("[route.customer]", f'mirror_legs = "{value}"\n[route.customer]')
        return (legs(route("acme", port, port_a, certs, match='client = ["cn:acme"]'), acme_legs),
                legs(route("rest", port, port_a, certs), rest_legs))

    def sip_legs(conn: str) -> list[str]:
        return sorted({e["leg"] for e in jsonl if e["type"] == "sip" and e["conn_id"] == conn})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_jsonl, listener, jsonl)
        core_a, port_a = await start_lab_core(nursery, certs)
        config = write(tmp_path / "siptap.toml", *routes("both", None), top=top)
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        await siptap.port()
        for cert in ("acme", "initech"):
            await (await options_via(port, certs, cert)).aclose()
        await siptap.wait_for("connection_observed", count=2)
        # The rest route now mirrors the core leg only; acme keeps both.
        write(tmp_path / "siptap.toml", *routes("both", "core"), top=top)
        siptap.signal(signal.SIGHUP)
        await siptap.wait_for("reloaded")
        await siptap.wait_for("mirror_reloaded")
        await (await options_via(port, certs, "initech")).aclose()
        await siptap.wait_for("connection_observed", count=3)
        assert await siptap.stop() == 0
        nursery.cancel_scope.cancel()
    listener.close()

    closed = {e["conn"]: e["route"] for e in siptap.find("connection_closed")}
    acme, rest_before, rest_after = list(closed)
    assert [closed[c] for c in (acme, rest_before, rest_after)] == ["acme", "rest", "rest"]
    assert sip_legs(acme) == ["core", "customer"]
    assert sip_legs(rest_before) == ["customer"]
    assert sip_legs(rest_after) == ["core"]
    assert not siptap.find("reload_failed")
