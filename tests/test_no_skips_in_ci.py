"""Under CI=true no test can vanish: every kind of skip fails, naming its reason (``no_skips_in_ci``)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SKIPPING = {
    "test_skips_inside.py": """
        import pytest

        def test_inside():
            pytest.skip("no Captum here")
    """,
    "test_skips_by_mark.py": """
        import pytest

        @pytest.mark.skip(reason="no backend yet")
        def test_marked():
            pass
    """,
    "test_skips_in_a_fixture.py": """
        import pytest

        @pytest.fixture
        def browser():
            pytest.skip("no Chromium on the PATH")

        def test_page(browser):
            pass
    """,
    "test_skips_the_module.py": """
        import pytest

        pytest.importorskip("a_module_nobody_installed")

        def test_never_collected():
            pass
    """,
    "test_passes.py": """
        def test_passes():
            pass
    """,
}
REASONS = (
    "no Captum here",
    "no backend yet",
    "no Chromium on the PATH",
    "could not import 'a_module_nobody_installed'",
)


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(**SKIPPING)
    return pytester


def test_under_ci_every_skip_fails_naming_its_reason(suite, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-p", "no_skips_in_ci", "--continue-on-collection-errors", "-ra")
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) == 0, result.stdout.str()
    # A skip in the test fails it; one at set-up (a mark, a fixture) or collection (the module) is an error.
    assert (outcomes.get("failed", 0), outcomes.get("errors", 0), outcomes.get("passed", 0)) == (1, 3, 1)
    output = result.stdout.str()
    for reason in REASONS:
        assert f"skipped under CI=true, where nothing may be skipped: {reason}" in output, reason
    assert result.ret != 0


def test_outside_ci_a_skip_stays_a_skip(suite, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest("-p", "no_skips_in_ci", "-ra")
    result.assert_outcomes(passed=1, skipped=4)
    assert result.ret == 0
