"""Asking a responder (siptap.tls.ocsp_client, siptap.tls.ocsp_check.OcspChecker) over real
loopback sockets: what a responder may answer in HTTP, and one request per certificate when
many handshakes ask at once."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from siptap.tls.ocsp_check import OcspChecker
from siptap.tls.ocsp_client import MAX_RESPONSE, OcspUnavailable, fetch_ocsp
from siptap.tls.pem import load_certificate_chain
from siptap.tools.ocsp_responder import LabOcspResponder

Answer = Callable[[bytes], bytes]


async def serve_raw(nursery: trio.Nursery, answer: Answer) -> int:
    """A TCP server that reads one request head and body and writes ``answer(request)``."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 5:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
        await stream.send_all(answer(data))
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


@pytest.mark.parametrize(("answer", "result"), [
    # Chunked and close-delimited bodies are bodies too.
    (lambda r: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
    (lambda r: b"HTTP/1.0 200 OK\r\n\r\nabcde", b"abcde"),
    (lambda r: r.split(b"\r\n\r\n", 1)[1].join([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b""]), b"hello"),
])
async def test_answers_in_any_http_framing(answer: Answer, result: bytes) -> None:
    async with trio.open_nursery() as nursery:
        port = await serve_raw(nursery, answer)
        assert await fetch_ocsp(f"http://127.0.0.1:{port}/ocsp", b"hello", timeout=10) == result
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("answer", "problem"), [
    (lambda r: b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", "the responder answered HTTP 500"),
    (lambda r: b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "did not answer in HTTP"),
    (lambda r: b"", "did not answer in HTTP"),
    (lambda r: b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * (MAX_RESPONSE + 1), f"the answer exceeds {MAX_RESPONSE} bytes"),
])
async def test_no_usable_http_answer_is_unavailable(answer: Answer, problem: str) -> None:
    async with trio.open_nursery() as nursery:
        port = await serve_raw(nursery, answer)
        with pytest.raises(OcspUnavailable, match=problem):
            await fetch_ocsp(f"http://127.0.0.1:{port}/", b"hello", timeout=10)
        nursery.cancel_scope.cancel()


async def test_concurrent_checks_of_one_certificate_ask_once(pki: Path, tmp_path: Path) -> None:
    own = tmp_path / "pki"
    shutil.copytree(pki, own)
    chain = [load_certificate_chain(own / f"{name}.pem")[0] for name in ("customer", "ca")]
    responder = LabOcspResponder(own)
    responder.hold = trio.Event()
    outcomes = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(responder.serve)
        checker = OcspChecker("hard", url=f"http://127.0.0.1:{port}/", timeout=30, route="test", leg="customer")

        async def check() -> None:
            outcomes.append(await checker.status(chain, None))

        for _ in range(5):
            nursery.start_soon(check)
        await trio.testing.wait_all_tasks_blocked()
        assert responder.requests == 1 and outcomes == []  # one asks, four wait for its answer
        responder.hold.set()
        with trio.fail_after(20):
            while len(outcomes) < 5:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert responder.requests == 1
    assert [(o.result, o.source) for o in outcomes] == [("good", "responder")] * 5
