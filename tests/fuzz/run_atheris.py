"""Coverage-guided fuzzing of one harness with atheris (libFuzzer for Python).

    python -m tests.fuzz.run_atheris TARGET [libFuzzer options] [CORPUS_DIR ...]
    python -m tests.fuzz.run_atheris sip_framer -max_total_time=600 /tmp/work tests/fuzz/corpus/sip_framer
    python -m tests.fuzz.run_atheris hep crash-1234abcd         # reproduce one input

TARGET is a key of :data:`tests.fuzz.targets.TARGETS`. libFuzzer writes new interesting inputs
into the *first* corpus folder: give it a scratch folder first and the committed corpus after
it, so the committed seed corpus only grows by hand. A crash stops the run with exit code 1
(an uncaught Python exception; atheris prints the traceback) and saves the input as
``<-artifact_prefix>crash-<sha1>``; copy it into ``tests/fuzz/corpus/<target>/`` as
``regress-<what it found>`` so the replay test keeps it as a regression input (make_corpus.py
rewrites the seeds and keeps only ``crash-*`` and ``regress-*`` files besides them).

Only ``siptap.sansio`` (and the harnesses) are instrumented for coverage: the code under test.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["siptap.sansio", "tests.fuzz"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run_atheris {{{','.join(TARGETS)}}} [libFuzzer args]")
    harness = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
