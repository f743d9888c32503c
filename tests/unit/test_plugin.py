"""The pytest plugin turns scenario outcomes into run.json, and never reports a pass it did not see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def run_json(folder: Path) -> dict[str, object]:
    return dict(json.loads((folder / "run.json").read_text()))


def test_scenario_that_errors_makes_run_inconclusive(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.scenario("broken")
        def test_broken():
            raise RuntimeError("the sandbox did not start")
        """
    )
    report_dir = tmp_path / "report"

    result = pytester.runpytest("-p", "stormgate.plugin", "--report-dir", str(report_dir))

    result.assert_outcomes(failed=1)
    record = run_json(report_dir)
    assert record["verdict"] == "inconclusive"
    assert "the sandbox did not start" in str(record["errors"])
    assert (report_dir / "report.html").exists()
    result.stdout.fnmatch_lines(["*VERDICT: INCONCLUSIVE*"])


def test_run_without_scenarios_writes_no_record(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    report_dir = tmp_path / "report"

    result = pytester.runpytest("-p", "stormgate.plugin", "--report-dir", str(report_dir))

    result.assert_outcomes(passed=1)
    assert not (report_dir / "run.json").exists()


def test_run_json_puts_verdict_first(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.scenario("skipped")
        def test_skipped():
            pytest.skip("nothing to judge")
        """
    )
    report_dir = tmp_path / "report"

    pytester.runpytest("-p", "stormgate.plugin", "--report-dir", str(report_dir), "--seed", "42")

    text = (report_dir / "run.json").read_text()
    assert text.lstrip("{\n ").startswith('"verdict": "inconclusive"')
    assert run_json(report_dir)["seed"] == 42


def test_unknown_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("-p", "stormgate.plugin", "--no-such-option")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --no-such-option*"])
