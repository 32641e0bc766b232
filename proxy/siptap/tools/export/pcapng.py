"""``calls.pcapng``: the selected messages as synthetic TCP, with the key log as a Decryption Secrets Block."""

from __future__ import annotations

from siptap import __version__
from siptap.sansio import pcap
from siptap.tools.export.captures import CaptureScan, Flow, Message
from siptap.tools.export.selection import Selection


def encode_pcapng(chosen: list[Message], scan: CaptureScan, selection: Selection, keys: bytes) -> bytes:
    """SHB, IDB, DSB (if keys), then the chosen messages re-encoded flow by flow, in their
    original order, each flow's FIN exchange where it was if it lies in the window."""
    out = [pcap.pcapng_section_header(f"siptap {__version__} export".encode()),
           pcap.pcapng_interface_description(name=b"siptap-export")]
    if keys:
        out.append(pcap.pcapng_decryption_secrets(keys))
    order = scan.order
    # (rank in the capture, 0 message / 1 FIN exchange, what): a FIN sorts after a message of the same rank.
    items: list[tuple[int, int, Message | tuple[Flow, int]]] = [(order[m.position], 0, m) for m in chosen]
    kept_flows = {m.flow for m in chosen}
    for flow, (ts_us, position) in scan.fins.items():
        if flow in kept_flows and selection.in_window(ts_us):
            items.append((order[position], 1, (flow, ts_us)))
    items.sort(key=lambda item: (item[0], item[1]))
    tcp: dict[Flow, pcap.TcpFlow] = {}

    def record(ts_us: int, frame: bytes) -> None:
        out.append(pcap.pcapng_enhanced_packet(ts_us // 1_000_000, ts_us % 1_000_000, frame))

    for _pos, _kind, item in items:
        if not isinstance(item, Message):
            flow, ts_us = item
            if flow in tcp:
                for frame in tcp[flow].fin(True) + tcp[flow].fin(False):
                    record(ts_us, frame)
            continue
        message = item
        tcp_flow = tcp.get(message.flow)
        if tcp_flow is None:
            tcp_flow = tcp[message.flow] = pcap.TcpFlow(message.client, message.server)
            for frame in tcp_flow.handshake():
                record(message.ts_us, frame)
        frames = tcp_flow.segment(message.from_client, message.data)
        stamps = message.frame_ts if len(message.frame_ts) == len(frames) else [message.ts_us] * len(frames)
        for ts_us, frame in zip(stamps, frames):
            record(ts_us, frame)
    return b"".join(out)
