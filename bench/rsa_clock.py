"""By hand: CPU per S2 connection of each middle, in units of its own RSA work.

On this shared VM, utime+stime per connection swings by up to ~1.5x between runs (other
tenants, steal). The bignum code of the RSA private and public operations, though, is a fixed
amount of work per proxied connection, the same for every relay here (customer-leg RSA
decrypt, the client-certificate signature toward the core, the peers' signatures and
certificates verified; the same assembler code in the system OpenSSL and in the one bundled
with cryptography). So a middle's CPU per connection relative to another's is the inverse
ratio of the share of its samples spent in bignum code: ``perf record`` of the middle during
an S2 window (SIPp -t tn), per middle, from one chain each (bench/chain.py).

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

from bench import chain as c  # noqa: E402

BIGNUM = re.compile(r"bn_|mulx|sqrx|__bn|BN_|bin2bn|mont")


def bignum_share(data: Path) -> tuple[float, float]:
    """(share of all samples in bignum symbols, share in Python's interpreter library)."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio",
                          "-g", "none"], capture_output=True, text=True).stdout
    bignum = python = 0.0
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
        if not m:
            continue
        share, dso, sym = float(m.group(1)), m.group(2), m.group(3)
        if BIGNUM.search(sym):
            bignum += share
        if dso.startswith("libpython"):
            python += share
    return bignum / 100, python / 100


async def one(kind: str, tmp: Path, pki: c.Pki, seconds: float) -> tuple[float, float]:
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
    return bignum_share(data)


async def main(middles: list[str], seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rsa-clock-"))
    pki = c.make_pki(tmp)
    shares = {}
    for kind in middles:
        shares[kind] = await one(kind, tmp / kind, pki, seconds)
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
