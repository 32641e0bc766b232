"""The full chain with real peers, on loopback, every port free-picked:

    sipp UAC --TCP--> stunnel --TLS 1.2, mTLS--> siptap --TLS, mTLS--> Kamailio --TCP--> sipp UAS
    (-sn uac)         client: customer.pem,      siptap run:           TLS server: core.pem,
                      IMG 2020 cipher offer      proxy-server.pem in,  requires and verifies
                      (ECDHE first, RSA last)    proxy-client.pem out  siptap's certificate

N real INVITE/100/180/200/ACK/BYE/200 calls (100 from Kamailio, the rest end to end), in two
modes: trunk (SIPp `-t t1`: every call on one long-lived connection, so one TLS connection per
leg) and churn (`-t tn`: one TCP connection per call, so stunnel opens one TLS connection per call
and siptap one toward Kamailio per call). Oracles: SIPp's own statistics and exit codes (UAC and
UAS) and siptap's JSON log. For the trunk run, tcpdump captures both TLS legs: the customer leg
(TLS 1.2, RSA key exchange) decrypts in tshark with only siptap's server key, the core leg (TLS 1.3
with Kamailio) with siptap's NSS key log; each holds exactly the SIP messages SIPp sent and
received, by Call-ID.

Peers: Kamailio 5.6, SIPp 3.6, stunnel 5 from Debian; how they are set up (and why) is in
tests/integration/peers.py and the templates in tests/integration/peers/.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from siptap.tools.lab.customer import IMG2020_CIPHERS
from tests.integration import interop, peers
from tests.integration.capture import LoopbackCapture, require, tshark_fields
from tests.mirror.helpers import free_port
from tests.mirror.test_hep import udp_socket_state
from tests.relay.harness import SiptapProcess, write_config

CALLS = 200

pytestmark = pytest.mark.peers


@dataclass
class Chain:
    siptap: SiptapProcess
    siptap_port: int
    kamailio: peers.Peer
    uas: peers.Peer
    stunnel: peers.Peer
    keylog: Path

    @property
    def core_port(self) -> int:
        return self.kamailio.ports[0]

    @property
    def entry_port(self) -> int:
        return self.stunnel.ports[0]


@contextlib.asynccontextmanager
async def chain(nursery: trio.Nursery, tmp: Path, pki: Path, calls: int, mirror: str = "") -> AsyncIterator[Chain]:
    """Start the UAS, Kamailio, siptap and stunnel, in that order (each is ready before the next
    one needs it); stop them in reverse."""
    keylog = tmp / "keys.log"
    async with peers.sipp_uas(tmp, calls=calls) as uas, \
            peers.kamailio(tmp, pki, uas_port=uas.ports[0]) as kamailio:
        config = write_config(tmp, pki, cores=[kamailio.ports[0]], top=f'[mirror.keylog]\npath = "{keylog}"\n{mirror}')
        siptap = SiptapProcess(config)
        await siptap.start(nursery)
        try:
            siptap_port = await siptap.port()
            async with peers.stunnel_client(tmp, pki, connect_port=siptap_port, ciphers=IMG2020_CIPHERS) as stunnel:
                yield Chain(siptap, siptap_port, kamailio, uas, stunnel, keylog)
        finally:
            with trio.CancelScope(shield=True):
                if siptap.process is not None and siptap.process.returncode is None:
                    await siptap.stop()


def sipp_traffic(run: peers.SippRun) -> Counter[tuple[str, str]]:
    """(method or status code, Call-ID) of every message SIPp traced as sent or received. Complete
    for a trunk (`-t t1`: the connection is up before the first send, no send is buffered); the
    caller checks the total."""
    traffic: Counter[tuple[str, str]] = Counter()
    for _, text in run.messages:
        first = text.split(None, 2)
        kind = first[1] if first[0] == "SIP/2.0" else first[0]
        traffic[(kind, peers.sip_header(text, "Call-ID"))] += 1
    return traffic


def wire_traffic(messages: list[peers.WireSip]) -> Counter[tuple[str, str]]:
    return Counter((m.method or m.status, m.call_id) for m in messages)


async def assert_calls_succeeded(uac: peers.SippRun, uas: peers.Peer, calls: int) -> None:
    assert uac.returncode == 0, uac.describe()  # SIPp exits 0 only when every call succeeded
    assert uac.counter("OutgoingCall(C)") == calls, uac.describe()
    assert uac.counter("SuccessfulCall(C)") == calls, uac.describe()
    assert uac.counter("FailedCall(C)") == 0, uac.describe()
    assert len(set(uac.call_ids())) == calls
    # The UAS ends by itself after `calls` calls (and its scenario's 4 s time-wait).
    assert await uas.wait(timeout=30) == 0, uas.log_tail()
    uas_stats = peers.read_sipp_stats(uas.log.parent / "stats.csv")
    assert int(uas_stats["SuccessfulCall(C)"]) == calls
    assert int(uas_stats["FailedCall(C)"]) == 0


def assert_siptap_log(siptap: SiptapProcess, connections: int, uac: peers.SippRun) -> None:
    assert siptap.find("handshake_failed") == []
    assert siptap.find("upstream_failed") == [] and siptap.find("no_upstream") == []
    assert len(siptap.find("connection_accepted")) == connections
    customer = siptap.find("handshake_done", leg="customer")
    assert len(customer) == connections
    assert {(e["version"], e["key_exchange"]) for e in customer} == {("TLSv1.2", "RSA")}
    assert {e["peer_certificate"]["common_name"] for e in customer} == {"customer"}
    core = siptap.find("handshake_done", leg="core")
    assert len(core) == connections
    assert {e["peer_certificate"]["common_name"] for e in core} == {"core"}
    closed = siptap.find("connection_closed")
    assert len(closed) == connections
    assert {e["closed_by"] for e in closed} == {"customer"}
    # siptap observed every INVITE SIPp sent, by Call-ID.
    invites = [e["call_id"] for e in siptap.find("sip", method="INVITE", direction="customer->core")]
    assert Counter(invites) == Counter(uac.call_ids())


@pytest.mark.interop
@require("kamailio", "sipp", "stunnel4", "tcpdump", "tshark", "sngrep")
async def test_trunk_many_calls_on_one_connection_and_both_legs_decrypt(pki: Path, tmp_path: Path) -> None:
    # The mirror feeds real consumers in the same run: sngrep receives HEP, and the pcap sink writes.
    hep_port = free_port(kind=2)
    sngrep_out = tmp_path / "sngrep.pcap"
    sngrep = subprocess.Popen(["sngrep", "-N", "-q", "-L", f"udp:127.0.0.1:{hep_port}", "-O", str(sngrep_out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mirror = f'[[mirror.hep]]\naddress = "127.0.0.1:{hep_port}"\n[mirror.pcap]\ndirectory = "{tmp_path}/pcap"\n'
    try:
        with trio.fail_after(10):
            while udp_socket_state(hep_port) is None:
                await trio.sleep(0.01)  # polling a condition, bounded
        await _trunk_run(pki, tmp_path, mirror, hep_port, sngrep_out, sngrep)
    finally:
        if sngrep.poll() is None:
            sngrep.kill()
            sngrep.wait()


async def _trunk_run(pki: Path, tmp_path: Path, mirror: str, hep_port: int, sngrep_out: Path,
                     sngrep: subprocess.Popen) -> None:
    async with trio.open_nursery() as nursery:
        async with chain(nursery, tmp_path, pki, CALLS, mirror) as c:
            with LoopbackCapture(tmp_path / "customer-leg.pcap", [c.siptap_port]) as customer_capture, \
                    LoopbackCapture(tmp_path / "core-leg.pcap", [c.core_port]) as core_capture:
                uac = await peers.run_sipp_uac(tmp_path, target_port=c.entry_port, calls=CALLS, transport="t1")
                await assert_calls_succeeded(uac, c.uas, CALLS)
                # SIPp closed its connection: stunnel, siptap and Kamailio close theirs.
                await c.siptap.wait_for("connection_closed")
                await customer_capture.wait_for_close(2)
                await core_capture.wait_for_close(2)
            assert await c.siptap.stop() == 0  # and the key-log file is complete
            assert_siptap_log(c.siptap, 1, uac)
        nursery.cancel_scope.cancel()
    (customer_hs,), (core_hs,) = c.siptap.find("handshake_done", leg="customer"), c.siptap.find("handshake_done", leg="core")
    interop.record(interop.from_handshake("chain/stunnel-esbc-img2020-offer", "stunnel as the E-SBC (SIPp behind it)",
                                          interop.stunnel_version(), customer_hs))
    interop.record(interop.from_handshake("chain/kamailio-core", "Kamailio as the core SBC", interop.kamailio_version(),
                                          core_hs))

    expected = sipp_traffic(uac)
    assert sum(expected.values()) == 7 * CALLS  # INVITE 100 180 200 ACK BYE 200, per call
    invite_ids = Counter(uac.call_ids())
    # An exact comparison needs complete captures: say so plainly if tcpdump lost packets.
    assert (customer_capture.kernel_drops, core_capture.kernel_drops) == (0, 0), "tcpdump dropped packets"

    # Customer leg: siptap's server key and nothing else.
    key = pki / "proxy-server.key"
    customer = peers.tshark_sip(customer_capture.path, "-o", f"sip.tls.port:{c.siptap_port}",
                                "-o", f'uat:rsa_keys:"{key}",""')
    assert Counter(m.call_id for m in customer if m.method == "INVITE") == invite_ids
    assert wire_traffic(customer) == expected
    assert peers.tshark_sip(customer_capture.path, "-o", f"sip.tls.port:{c.siptap_port}") == []  # no key, no SIP

    # Core leg: siptap's NSS key log (Kamailio chose the suite; TLS 1.3 is likely).
    core = peers.tshark_sip(core_capture.path, "-o", f"tls.keylog_file:{c.keylog}",
                            "-o", f"sip.tls.port:{c.core_port}")
    assert Counter(m.call_id for m in core if m.method == "INVITE") == invite_ids
    assert wire_traffic(core) == expected
    assert peers.tshark_sip(core_capture.path, "-o", f"sip.tls.port:{c.core_port}") == []
    # Kamailio demanded siptap's client certificate, and siptap sent proxy-client (inside the
    # encrypted TLS 1.3 handshake: visible only with the key log).
    assert "Client MUST present valid certificate" in c.kamailio.log.read_text()
    certificates = tshark_fields(core_capture.path, ["tcp.dstport", "x509sat.uTF8String"],
                                 "-o", f"tls.keylog_file:{c.keylog}", display_filter="tls.handshake.type == 11")
    assert any(port == str(c.core_port) and "proxy-client" in names.split(",") for port, names in certificates)

    # The HEP sngrep collected: exactly the messages SIPp sent and received.
    with trio.fail_after(10):
        while (state := udp_socket_state(hep_port)) and state[4].split(":")[1] != "00000000":
            await trio.sleep(0.01)  # everything read by sngrep
    # An exact comparison needs every datagram: say so plainly if sngrep fell behind and its
    # socket overflowed (seen once on a machine at load 10), as for tcpdump above.
    assert state is not None and state[-1] == "0", f"sngrep's HEP socket dropped {state and state[-1]} datagrams"
    sngrep.send_signal(signal.SIGTERM)  # sngrep writes its -O file on SIGTERM
    sngrep.wait(timeout=10)
    assert c.siptap.find("mirror_stopped")[0]["dropped"] == 0
    assert wire_traffic(peers.tshark_sip(sngrep_out)) == expected
    # The cleartext pcap sink: the same messages, readable without any key.
    pcaps = sorted((tmp_path / "pcap").glob("*.pcap"))
    assert len(pcaps) == 1
    assert wire_traffic(peers.tshark_sip(pcaps[0], "-d", f"tcp.port=={c.siptap_port},sip")) == expected


@require("kamailio", "sipp", "stunnel4")
async def test_churn_one_tls_connection_per_call(pki: Path, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        async with chain(nursery, tmp_path, pki, CALLS) as c:
            uac = await peers.run_sipp_uac(tmp_path, target_port=c.entry_port, calls=CALLS, transport="tn")
            await assert_calls_succeeded(uac, c.uas, CALLS)
            await c.siptap.wait_for("connection_closed", count=CALLS)
            assert await c.siptap.stop() == 0
            assert_siptap_log(c.siptap, CALLS, uac)
        nursery.cancel_scope.cancel()
    # stunnel made one TLS connection per SIPp connection.
    assert c.stunnel.log.read_text().count("accepted connection from") == CALLS
