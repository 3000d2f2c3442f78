"""Test tiers: every test carries exactly one of the markers unit, integration, lab.

A module sets ``pytestmark = pytest.mark.<tier>``; a test without a tier fails
collection, so `pytest -m "unit or integration"` never silently skips a new test.
"""

import pytest

TIERS = ("unit", "integration", "lab")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    untiered = [i.nodeid for i in items if not any(i.get_closest_marker(t) for t in TIERS)]
    if untiered:
        raise pytest.UsageError(
            "tests without a tier marker (unit|integration|lab): " + ", ".join(untiered[:10])
        )
