"""The in-process gate stores the report in the job folder it names, for a pass and for an early rejection."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffaudit.gate import GateOptions, run_in_process


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One gate cache for both runs: the training features are computed once."""
    return tmp_path_factory.mktemp("gate-cache")


@pytest.mark.parametrize(
    ("min_irs", "outcome", "verdict"), [(0.05, "pass", "Succeeded"), (0.99, "rejected", "Rejected")]
)
def test_the_in_process_gate_stores_the_report(
    tiny_demo_model: Path, cache_dir: Path, min_irs: float, outcome: str, verdict: str
) -> None:
    options = GateOptions(min_irs=min_irs, max_samples=64, steps=5, batch_size=32)
    result = run_in_process(tiny_demo_model, "digits", options, cache_dir)
    assert result.outcome == outcome, result
    assert result.evaluation is not None
    page = Path(result.evaluation, "report.html").read_text()
    assert verdict in page[: page.index("</section>")]
    assert "data:image/png;base64," in page  # the figures the stages stored (the sample grid, the IRS curve)
    assert str(tiny_demo_model) in page and "1797" in page  # checkpoint and dataset facts
