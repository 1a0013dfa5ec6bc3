"""The checks cannot be fooled: in CI a missing shared-data folder fails the tests that need it."""

from __future__ import annotations

import pytest

from tests.conftest import shared_data


def test_missing_shared_data_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="shared data not found"):
        shared_data("no-such-file.csv")


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_shared_data_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="shared data not found"):
        shared_data("no-such-file.csv")
