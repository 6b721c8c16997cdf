"""Shared fixtures: the real Edge-MoE data folder, when present beside the checkout."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "edge-moe"


@pytest.fixture(scope="session")
def real_data():
    """Path to ../shared/data/edge-moe; skips the test with a reason where it is absent."""
    if not (DATA / "image.float32.bin").is_file():
        pytest.skip(f"real Edge-MoE weights not found at {DATA} (shared data folder absent)")
    return DATA
