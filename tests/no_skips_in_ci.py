"""Under CI, a skipped test is a failed one, so no test can vanish into the ``-ra`` summary.

A test skips where something it needs is missing (a browser, Captum, Lucent). On a developer's machine that is
a note; under ``CI=true`` (or ``1``, ``yes``) the skip, at collection or while running, fails naming its reason.
Loaded by ``tests/conftest.py``; an expected failure (``xfail``) stays what it is.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def fail_the_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    reason = str(reason).removeprefix("Skipped: ")
    report.longrepr = f"skipped under CI={os.environ['CI']}, where nothing may be skipped: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        fail_the_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    if report.skipped and in_ci():
        fail_the_skip(report)
    return report
