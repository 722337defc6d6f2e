"""experiments/rft_probe.py: the regime after each RFT round, on the embedded tiny-countdown model."""

from __future__ import annotations

import pytest

from experiments.countdown_regime import group_regime
from experiments.rft_probe import main


def test_group_regime_hand_computed():
    # 3 problems x 2 samples: [1, 1] solved twice, [0, 0] never, [1, 0] once
    # pass@1 = 3 / 6 = 0.5; all-success 1 / 3; all-fail 1 / 3
    assert group_regime([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], 2) == pytest.approx((0.5, 1 / 3, 1 / 3))
    with pytest.raises(ValueError, match="not whole groups of 2"):
        group_regime([1.0, 0.0, 1.0], 2)


@pytest.mark.slow
def test_probe_end_to_end(capsys, tmp_path):
    main(
        [
            "--rounds",
            "1",
            "--prompts",
            "4",
            "--k",
            "4",
            "--steps",
            "2",
            "--eval",
            "2",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| start") or line.startswith("| round 1")]
    assert len(rows) == 2, out
    for row in rows:  # three fractions per row
        values = [float(c) for c in row.strip("|").split("|")[1:]]
        assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    assert "kept " in rows[1] and (tmp_path / "m" / "config.json").exists()
