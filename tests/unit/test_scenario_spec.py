"""Scenario files are validated before anything runs, with errors that name file, field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from stormgate.errors import InvalidScenario
from stormgate.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda path: path.name)
def test_suite_scenarios_are_valid(path: Path) -> None:
    spec = load_scenario(path)

    assert spec.slos
    assert spec.duration_s > 0


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda path: path.name)
def test_nightly_profile_is_longer(path: Path) -> None:
    quick = load_scenario(path)
    nightly = load_scenario(path, profile="nightly")

    assert nightly.duration_s > quick.duration_s


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nfault: {kind: instance-kill}\nslos: []\n", "slos: List should have at least 1 item"),
        ("name: Bad Name\nfault: {kind: instance-kill}\n", "name: String should match pattern"),
        ("name: x\nfault: {kind: meteor}\n", "fault"),
        ("- just\n- a list\n", "must contain a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
        (
            "name: x\nfault: {kind: instance-kill}\nslos:\n  - {name: a, kind: availability, phases: [baseline]}\n",
            "needs min_success_ratio",
        ),
        (
            "name: x\nfault: {kind: instance-kill}\nslos:\n  - {name: a, kind: availability, phases: [middle], "
            "min_success_ratio: 0.9}\n",
            "'middle'",
        ),
    ],
)
def test_invalid_scenario_is_rejected(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)

    with pytest.raises(InvalidScenario) as raised:
        load_scenario(path)

    assert str(path) in str(raised.value)
    assert expected in str(raised.value)


def test_invalid_scenario_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text("name: x\n")

    with pytest.raises(ValueError, match="fault: Field required"):
        load_scenario(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidScenario, match="cannot be read"):
        load_scenario(tmp_path / "absent.yaml")


def test_unknown_profile_is_rejected() -> None:
    with pytest.raises(InvalidScenario) as raised:
        load_scenario(SCENARIOS / "replica_loss.yaml", profile="bogus")

    assert "no profile 'bogus'" in str(raised.value)
    assert "quick, nightly" in str(raised.value)
