"""Tests of the window statistics and the regime classification on hand-built records."""

from __future__ import annotations

import math

import pytest

from hclm.forces import ForceRecord, RegimeThresholds, classify_regime, summarize_records, volatility

STEADY_STRENGTH = (1.0, 1.1, 0.9, 1.0, 1.0)


def make_records(
    relative_strength: float = 0.5,
    alignment: float = 0.2,
    persistence: float = 0.9,
    strengths: tuple[float, ...] = STEADY_STRENGTH,
) -> list[dict[str, float]]:
    """Build one record per strength, all other fields constant, with NaN persistence at the first."""
    records = []
    for index, strength in enumerate(strengths):
        records.append(
            {
                "strength": strength,
                "relative_strength": relative_strength,
                "alignment": alignment,
                "novelty": 0.3,
                "persistence": math.nan if index == 0 else persistence,
                "injection": 0.01,
                "dissipation": -0.002,
            }
        )
    return records


# Regime of constructed series -----------------------------------------------------------------

# The expected regimes assume the default thresholds (r_min 0.05, c_min −0.9, v_max 1.0, p_min 0.2).
# The strengths (0, 0, 0, 0, 10) have mean 2 and population std 4, so their volatility is 2 > 1.
REGIME_CASES = {
    "effective": make_records(),
    "weak": make_records(relative_strength=0.01),
    "opposed": make_records(alignment=-0.95),
    "unstable by volatility": make_records(strengths=(0.0, 0.0, 0.0, 0.0, 10.0)),
    "unstable by persistence": make_records(persistence=-0.5),
    "weak before opposed": make_records(relative_strength=0.01, alignment=-0.95),
    "weak before unstable": make_records(relative_strength=0.01, persistence=-0.5),
    "opposed before unstable": make_records(alignment=-0.95, strengths=(0.0, 0.0, 0.0, 0.0, 10.0)),
}
EXPECTED_REGIMES = {
    "effective": "effective",
    "weak": "weak",
    "opposed": "opposed",
    "unstable by volatility": "unstable",
    "unstable by persistence": "unstable",
    "weak before opposed": "weak",
    "weak before unstable": "weak",
    "opposed before unstable": "opposed",
}


@pytest.mark.parametrize("case", sorted(REGIME_CASES))
def test_summary_regime_of_series(case: str) -> None:
    summary = summarize_records(REGIME_CASES[case])

    assert summary.regime == EXPECTED_REGIMES[case]


def test_summary_accepts_force_records() -> None:
    records = [
        ForceRecord(step=index, lam=0.1, loss=1.0, entropy=2.0, loss_force_norm=2.0, **fields)
        for index, fields in enumerate(make_records(alignment=-0.95))
    ]

    assert summarize_records(records).regime == "opposed"


def test_overridden_thresholds_change_regime() -> None:
    cases = [
        (make_records(relative_strength=0.03), RegimeThresholds(r_min=0.01), "weak", "effective"),
        (make_records(alignment=-0.5), RegimeThresholds(c_min=-0.4), "effective", "opposed"),
        (make_records(persistence=0.3), RegimeThresholds(p_min=0.5), "effective", "unstable"),
        (make_records(strengths=(0.0, 0.0, 0.0, 0.0, 10.0)), RegimeThresholds(v_max=3.0), "unstable", "effective"),
    ]

    for records, thresholds, default_regime, overridden_regime in cases:
        assert summarize_records(records).regime == default_regime, thresholds
        assert summarize_records(records, thresholds).regime == overridden_regime, thresholds


def test_classify_thresholds_are_strict() -> None:
    # Each statistic equal to its default threshold triggers nothing, because every check is strict.
    assert classify_regime(0.05, -0.9, 1.0, 0.2) == "effective"


def test_classify_just_past_thresholds() -> None:
    assert classify_regime(0.0499, 0.0, 0.0, 1.0) == "weak"
    assert classify_regime(0.5, -0.901, 0.0, 1.0) == "opposed"
    assert classify_regime(0.5, 0.0, 1.001, 1.0) == "unstable"
    assert classify_regime(0.5, 0.0, 0.0, 0.199) == "unstable"


def test_classify_undefined_statistics() -> None:
    # A NaN relative strength means no force was measured, so it counts as weak. Other NaNs trigger nothing.
    assert classify_regime(math.nan, 0.0, 0.0, 1.0) == "weak"
    assert classify_regime(0.5, math.nan, 0.0, 1.0) == "effective"
    assert classify_regime(0.5, 0.0, math.nan, 1.0) == "effective"
    assert classify_regime(0.5, 0.0, 0.0, math.nan) == "effective"


def test_classify_custom_thresholds() -> None:
    thresholds = RegimeThresholds(r_min=0.5, c_min=0.0, v_max=0.1, p_min=0.9)

    assert classify_regime(0.4, 0.5, 0.0, 1.0, thresholds) == "weak"
    assert classify_regime(0.6, -0.1, 0.0, 1.0, thresholds) == "opposed"
    assert classify_regime(0.6, 0.5, 0.2, 1.0, thresholds) == "unstable"
    assert classify_regime(0.6, 0.5, 0.0, 0.8, thresholds) == "unstable"
    assert classify_regime(0.6, 0.5, 0.0, 0.95, thresholds) == "effective"


def test_empty_window_is_weak() -> None:
    summary = summarize_records([])

    assert summary.measurements == 0
    assert summary.regime == "weak"
    assert math.isnan(summary.effective_entropy_share)


# Volatility -----------------------------------------------------------------------------------


def test_volatility_constant_series() -> None:
    assert volatility([3.0, 3.0, 3.0, 3.0]) == 0.0


def test_volatility_known_series() -> None:
    # (2, 4, 4, 4, 5, 5, 7, 9) has mean 5 and population variance 32/8 = 4, so std/mean = 2/5.
    assert volatility([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx(0.4, rel=1e-14)


def test_volatility_ignores_nan() -> None:
    values = [math.nan, 2.0, 4.0, 4.0, math.nan, 4.0, 5.0, 5.0, 7.0, 9.0, None]

    assert volatility(values) == pytest.approx(0.4, rel=1e-14)


def test_volatility_too_few_values() -> None:
    assert math.isnan(volatility([1.5]))
    assert math.isnan(volatility([math.nan, 1.5]))
    assert math.isnan(volatility([]))


def test_volatility_all_zero() -> None:
    assert volatility([0.0, 0.0, 0.0]) == 0.0


# Totals and medians ---------------------------------------------------------------------------


def flow_records(injection: list[float], dissipation: list[float]) -> list[dict[str, float]]:
    records = make_records(strengths=(1.0,) * len(injection))
    for record, injected, dissipated in zip(records, injection, dissipation):
        record["injection"] = injected
        record["dissipation"] = dissipated
    return records


def test_summary_totals_by_hand() -> None:
    summary = summarize_records(flow_records([1.0, 2.0, 3.0], [-1.0, 0.5, -2.5]))

    # Σ I = 6, Σ D = −3, Σ |D| = 4, so φ = 6/(6 + 4) = 0.6.
    assert summary.injection_total == pytest.approx(6.0, rel=1e-14)
    assert summary.dissipation_total == pytest.approx(-3.0, rel=1e-14)
    assert summary.effective_entropy_share == pytest.approx(0.6, rel=1e-14)


def test_summary_totals_skip_nan() -> None:
    summary = summarize_records(flow_records([0.5, 0.25, math.nan, 1.0], [-0.25, 0.5, 0.1, math.nan]))

    # Totals sum the defined entries of each column: 0.5 + 0.25 + 1.0 and −0.25 + 0.5 + 0.1.
    # The share uses only rows where both are defined: 0.75 / (0.75 + 0.25 + 0.5) = 0.5.
    assert summary.injection_total == pytest.approx(1.75, rel=1e-14)
    assert summary.dissipation_total == pytest.approx(0.35, rel=1e-14)
    assert summary.effective_entropy_share == pytest.approx(0.5, rel=1e-14)


def test_summary_totals_all_undefined() -> None:
    summary = summarize_records(flow_records([math.nan, math.nan], [math.nan, math.nan]))

    assert math.isnan(summary.injection_total)
    assert math.isnan(summary.dissipation_total)
    assert math.isnan(summary.effective_entropy_share)


def test_summary_medians_by_hand() -> None:
    records = make_records(strengths=(4.0, 1.0, 3.0, 2.0))
    for record, alignment in zip(records, (0.1, math.nan, -0.3, 0.5)):
        record["alignment"] = alignment

    summary = summarize_records(records)

    # Strengths sort to (1, 2, 3, 4) with median 2.5. The finite alignments (−0.3, 0.1, 0.5) have
    # median 0.1. Persistence is NaN at the first record and 0.9 elsewhere.
    assert summary.measurements == 4
    assert summary.strength_median == pytest.approx(2.5, rel=1e-14)
    assert summary.alignment_median == pytest.approx(0.1, rel=1e-14)
    assert summary.persistence_median == pytest.approx(0.9, rel=1e-14)
    assert summary.relative_strength_median == pytest.approx(0.5, rel=1e-14)
    assert summary.novelty_median == pytest.approx(0.3, rel=1e-14)


def test_summary_volatility_by_hand() -> None:
    summary = summarize_records(make_records(strengths=(2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0)))

    assert summary.volatility == pytest.approx(0.4, rel=1e-14)


# Threshold validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("c_min", 2.0), ("c_min", -1.5), ("r_min", -1.0), ("v_max", -0.5), ("p_min", 1.5), ("r_min", math.nan)],
)
def test_invalid_thresholds_raise(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        RegimeThresholds(**{field: value})


def test_default_thresholds() -> None:
    assert RegimeThresholds().as_dict() == {"r_min": 0.05, "c_min": -0.9, "v_max": 1.0, "p_min": 0.2}
