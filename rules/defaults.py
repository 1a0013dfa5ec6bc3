"""The content shipped with the hub: the default PEAK pipeline and the example rules."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
PEAK_PIPELINE = HERE / "peak.yaml"
EXAMPLES_DIR = HERE / "examples"


def example_files() -> list[Path]:
    """The example resource files, sorted."""
    return sorted(EXAMPLES_DIR.glob("*.yaml"))


def default_files() -> list[Path]:
    """The default PEAK pipeline, then the examples."""
    return [PEAK_PIPELINE, *example_files()]
