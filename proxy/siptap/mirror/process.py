"""The mirror process: ``python -m siptap mirror --config FILE --channel PATH [--control-fd FD]``.

Theory of operation
-------------------
The supervisor starts this process before the relay workers (:mod:`siptap.supervisor`). It
builds the fan-out from ``[mirror]`` exactly as a single-process ``siptap run`` does
(:meth:`siptap.mirror.fanout.Fanout.from_settings`), so every sink and output format is the
one users know, and one process owns them: one key log, one pcap series, one HEP stream,
whatever the number of workers. It listens on the channel
(:class:`siptap.mirror.channel.ChannelReceiver`) and hands every record to the handler,
the observation engine.

Start-up: once the channel listens it writes ``ready`` on the control socket (the same
handshake as a worker's), so the supervisor starts the workers only when they can connect.
EOF on the control socket means the supervisor is gone (even SIGKILLed): the mirror then
stops as on SIGTERM instead of living on unsupervised.

Stop (SIGTERM/SIGINT, or the supervisor gone): stop accepting, drain what every channel has
queued, close the handler (its last events go to the fan-out), close the fan-out (each
sink flushes, within ``[mirror] drain_timeout``), exit 0. The supervisor stops the mirror
last, after the workers drained, so their final records are already queued by then. A
second signal does not hurry it: the drain is already bounded.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import trio

from siptap.config import Config, load_config
from siptap.errors import SiptapError
from siptap.log import LogWriter, get_logger
from siptap.metrics import Metrics, SipMessageCounts
from siptap.mirror.channel import TARGET_BATCH, ChannelReceiver, RecordHandler
from siptap.mirror.fanout import Fanout
from siptap.mirror.observer import Observer

__all__ = ["run_mirror"]

METRICS_INTERVAL = 1.0  # multiprocess metrics: how often the sinks' counters are copied out


# What turns records into mirror events: the Observer, unless a test passes its own.
HandlerFactory = Callable[[Fanout, LogWriter, SipMessageCounts], RecordHandler]


def observe(config: Config) -> HandlerFactory:
    """The observation engine for ``config``, publishing to the fan-out."""
    def build(fanout: Fanout, log: LogWriter, counts: SipMessageCounts) -> RecordHandler:
        return Observer.from_config(config, publish=fanout.publish, log=log, counts=counts)
    return build


async def run_mirror(config: Config, channel: Path, control_fd: int | None = None, *,
                     handler_factory: HandlerFactory | None = None) -> None:
    """The mirror process's main, until SIGTERM/SIGINT or the supervisor's going away."""
    log = get_logger("siptap")
    fanout = Fanout.from_settings(config.mirror)
    # The record loop is the only publisher here: it delivers after each slice of records,
    # and a mirror that falls behind leaves records in the channel (counted by the relay,
    # reported as a gap here) rather than dropping observed messages at its own queues.
    fanout.deliver_from_caller()
    counts = SipMessageCounts()
    handler = (handler_factory or observe(config))(fanout, log, counts)
    receiver = ChannelReceiver(channel, handler, log=log, drain_timeout=config.mirror.drain_timeout,
                               batch_interval=config.mirror.batch_interval, deliver=fanout.deliver_queued,
                               target_batch=target_batch(config.mirror.channel_buffer))
    control = socket.socket(fileno=control_fd) if control_fd is not None else None
    log.info("mirror_starting", pid=os.getpid(), channel=str(channel))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fanout.run)
            nursery.start_soon(_signals, receiver, log, functools.partial(_reload, config.path, handler, log))
            metrics = _multiprocess_metrics(config, fanout, counts)
            if metrics is not None:
                nursery.start_soon(_sync_metrics, metrics)
            async with trio.open_nursery() as channels:
                await channels.start(receiver.serve)
                if control is not None:
                    # Only now: a worker started after "ready" finds the socket listening.
                    control.sendall(b"ready\n")
                    nursery.start_soon(_lifeline, control, receiver, log)
                log.info("mirror_ready", channel=str(channel), sinks=sorted(fanout.stats()))
            # The receiver has drained every channel: nothing more will be handled.
            handler.close()
            await fanout.aclose()
            if metrics is not None:
                metrics.sync_mirror()
                metrics.sync_sip_messages()
            log.info("mirror_stopped", channels=receiver.channels, records=receiver.records,
                     invalid=receiver.invalid, **fanout.totals())
            nursery.cancel_scope.cancel()  # the signal watcher, the lifeline, the metrics copier
    finally:
        if control is not None:
            control.close()


# What the kernel charges a SIP-sized chunk record against the sender's buffer (tap.py's
# docstring: a ~930-byte chunk costs ~1,970 bytes).
_RECORD_CHARGE = 1970


def target_batch(channel_buffer: int, wmem_max_path: str = "/proc/sys/net/core/wmem_max",
                 privileged: bool | None = None) -> int:
    """How many records a receiver's wait may let gather: a quarter of what the channel holds
    (the workers' send buffer: ``channel_buffer`` capped at ``net.core.wmem_max`` unless the
    workers run as root, doubled by the kernel), at most channel.TARGET_BATCH. A burst that
    quadruples the rate during a wait still fits; with the kernel's default cap (208 KiB: ~216
    records) that is 54."""
    try:
        with open(wmem_max_path) as f:
            cap = int(f.read())
    except (OSError, ValueError):
        cap = 212992  # Linux's default
    if os.geteuid() == 0 if privileged is None else privileged:
        cap = channel_buffer  # relay/tap.set_send_buffer: root gets SO_SNDBUFFORCE, no cap
    capacity = 2 * min(channel_buffer, cap) // _RECORD_CHARGE
    return max(1, min(TARGET_BATCH, capacity // 4))


async def _signals(receiver: ChannelReceiver, log: LogWriter, reload: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                reload()
            else:
                log.info("mirror_stopping", signal=signal.Signals(signum).name)
                receiver.stop()


def _reload(path: Path, handler: RecordHandler, log: LogWriter) -> None:
    """SIGHUP (the supervisor forwards it, as to the workers): the routes' mirrored legs,
    [mirror] legs and message limits apply to the connections opened from now on. The
    outputs themselves (addresses, files, certificates) are not rebuilt: that needs a restart."""
    try:
        config = load_config(path)
    except SiptapError as exc:
        # The workers log reload_failed for the same file; this says the mirror kept its routes too.
        log.error("mirror_reload_failed", detail=str(exc), kept="previous routes")
        return
    if isinstance(handler, Observer):  # a test's own handler has no routes to reload
        handler.reload(config)
    log.info("mirror_reloaded", routes=sorted(route.name for route in config.routes),
             detail="mirrored legs and message limits apply to new connections; outputs need a restart")


async def _lifeline(control: socket.socket, receiver: ChannelReceiver, log: LogWriter) -> None:
    """EOF (or an error) on the control socket: the supervisor is gone, so stop."""
    sock = trio.socket.from_stdlib_socket(control)
    try:
        while await sock.recv(64):
            pass
    except OSError:
        pass
    log.warning("supervisor_gone", detail="the supervisor's control socket closed: stopping the mirror")
    receiver.stop()


def _multiprocess_metrics(config: Config, fanout: Fanout, counts: SipMessageCounts) -> Metrics | None:
    """Under the supervisor (its PROMETHEUS_MULTIPROC_DIR set) the sinks' counters go to the
    shared files, summed with the workers' at scrape time; alone, the mirror serves none."""
    if not config.metrics.enabled or "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return None
    metrics = Metrics(multiprocess=True, sip_message_counts=counts)
    metrics.watch_mirror(fanout.stats)
    return metrics


async def _sync_metrics(metrics: Metrics) -> None:
    while True:
        metrics.sync_mirror()
        metrics.sync_sip_messages()
        await trio.sleep(METRICS_INTERVAL)
