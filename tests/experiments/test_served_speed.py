"""benchmarks.experiments.served_speed: variants parsed from the command line, and one run
against this checkout itself."""

from __future__ import annotations

import pytest

from benchmarks.experiments.served_speed import main, parse_variant
from core.constants import PROJECT_ROOT, default_weights


def test_variant_options_are_typed_values(tmp_path):
    folder, kwargs = parse_variant(str(tmp_path), ["precision=int8", "threads=2", "tta=true"])
    assert folder == tmp_path.resolve()
    assert kwargs == {"precision": "int8", "threads": 2, "tta": True}


def test_a_variant_option_without_a_value_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="key=value"):
        parse_variant(str(tmp_path), ["precision"])


@pytest.mark.slow
def test_one_run_times_the_default_and_a_baseline(data_root, tmp_path):
    if not default_weights().is_file():
        pytest.skip("no shipped weights")
    out = tmp_path / "speed.json"
    result = main(["--baseline", str(PROJECT_ROOT), "tta=true", "--scans", "4", "--calls", "2", "--rounds", "2",
                   "--output", str(out)])
    assert out.is_file() and len(result["variants"]) == 2
    served, tta = result["variants"].values()
    assert len(served["rounds"]) == len(tta["rounds"]) == 2
    assert served["predict_p50_ms"] > 0 and tta["predict_batch_scans_per_s"] > 0
    assert served["rechecked_share"] is None  # this checkout has no int8 re-check
