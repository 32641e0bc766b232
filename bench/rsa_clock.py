"""By hand: CPU per S2 connection of each middle, in units of its own RSA work.

On this shared VM, utime+stime per connection swings by up to ~1.5x between runs (other
tenants, steal). The bignum code of the RSA private and public operations, though, is a fixed
amount of work per proxied connection, the same for every relay here (customer-leg RSA
decrypt, the client-certificate signature toward the core, the peers' signatures and
certificates verified; the same assembler code in the system OpenSSL and in the one bundled
with cryptography). So a middle's CPU per connection relative to another's is the inverse
ratio of the share of its samples spent in bignum code: ``perf record`` of the middle during
an S2 window (SIPp -t tn), per middle, from one chain each (bench/chain.py).

siptap's OpenSSL (in cryptography's _rust.abi3.so) has symbols: bignum is matched by name.
Debian's libcrypto.so.3 (stunnel) is stripped: there, bignum is the 4 KiB code pages that
hold at least 0.2 % of the samples of ``openssl speed rsa2048`` (recorded first; they cover
~93 % of its samples, so stunnel's share is slightly underestimated). Measured this way on the
loaded 2-core VM the two methods disagreed with bench/run.py's CPU-time ratio (see the report
of branch perf-hs): treat the figure as a second opinion, not the truth.

Usage: python bench/rsa_clock.py [--middles stunnel-pair,siptap-sinks-on] [--seconds 12]
"""

from __future__ import annotations

import argparse
import functools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import chain as c

BIGNUM = re.compile(r"bn_|mulx|sqrx|__bn|BN_|bin2bn|mont")


def _samples(data: Path) -> list[tuple[float, str, str]]:
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio",
                          "-g", "none"], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(\S+)", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3)))
    return rows


def stripped_bignum_pages(tmp: Path) -> set[tuple[str, int]]:
    """(dso, page) of the system libcrypto's hot RSA code, from a perf of `openssl speed rsa2048`."""
    data = tmp / "speed.perf"
    subprocess.run(["perf", "record", "-F", "1999", "-o", str(data), "--", "openssl", "speed", "-seconds", "2",
                    "-mr", "rsa2048"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    pages: dict[tuple[str, int], float] = {}
    for share, dso, sym in _samples(data):
        if sym.startswith("0x"):
            key = (dso, int(sym, 16) >> 12)
            pages[key] = pages.get(key, 0.0) + share
    return {key for key, share in pages.items() if share >= 0.2}


def bignum_share(data: Path, pages: set[tuple[str, int]]) -> tuple[float, float]:
    """(share of all samples in bignum code, share in Python's interpreter library)."""
    bignum = python = 0.0
    for share, dso, sym in _samples(data):
        if BIGNUM.search(sym) or (sym.startswith("0x") and (dso, int(sym, 16) >> 12) in pages):
            bignum += share
        if dso.startswith("libpython"):
            python += share
    return bignum / 100, python / 100


async def one(kind: str, tmp: Path, pki: c.Pki, seconds: float, pages: set[tuple[str, int]]) -> tuple[float, float]:
    async with c.chain(tmp, pki, kind) as ch:
        uac = c.SippUac(tmp, f"sipp-{kind}", target_port=ch.customer_port, transport="tn", rate=20000, limit=20)
        await uac.start()
        try:
            await trio.sleep(3)  # warm-up (a by-hand tool, not a test)
            data = tmp / f"{kind}.perf"
            perf = await trio.lowlevel.open_process(["perf", "record", "-F", "999", "-o", str(data), "-p",
                                                     str(ch.middle.pid), "--", "sleep", str(seconds)],
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await perf.wait()
        finally:
            await uac.stop()
    return bignum_share(data, pages)


async def main(middles: list[str], seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rsa-clock-"))
    pki = c.make_pki(tmp)
    pages = stripped_bignum_pages(tmp)
    shares = {}
    for kind in middles:
        shares[kind] = await one(kind, tmp / kind, pki, seconds, pages)
        print(f"{kind}: bignum {shares[kind][0]:.2%} of samples, libpython {shares[kind][1]:.2%}", flush=True)
    ref = middles[0]
    for kind in middles[1:]:
        print(f"CPU/connection {kind} / {ref} = {shares[ref][0] / shares[kind][0]:.2f}x (bignum-share ratio)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--middles", default="stunnel-pair,siptap-sinks-on,siptap-sinks-off")
    parser.add_argument("--seconds", type=float, default=12)
    args = parser.parse_args()
    trio.run(functools.partial(main, args.middles.split(","), args.seconds))
