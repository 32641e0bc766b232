"""The interop table's completeness check (see tests/integration/interop.py).

Each ``interop`` test checks its own rows against the README as it runs. What no single test
can see is a README row that no test produces any more, or a stale header: after the session,
if every ``interop`` test that was collected ran and passed (a partial run proves nothing about
the others' rows), the README's table must be exactly the one these rows render.
"""

from __future__ import annotations

import os

import pytest

from tests.integration import interop

_interop_ids: set[str] = set()
_interop_passed: set[str] = set()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _interop_ids.update(item.nodeid for item in items if item.get_closest_marker("interop"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid in _interop_ids and report.when == "call" and report.passed:
        _interop_passed.add(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _interop_ids or _interop_passed != _interop_ids or os.environ.get(interop.ROWS_ENV):
        return
    produced = interop.render(list(interop.RECORDED.values()))
    if interop.readme_block(interop.README.read_text()) != produced:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (f"README.md's interop table differs from what the interop tests produced (a row no test makes "
                   f"any more, or a changed header); refresh it with: {interop.REFRESH}")
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
