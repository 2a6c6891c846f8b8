"""Force probe, entropy-flow bookkeeping and the regime classification."""

from hclm.forces.probe import ForceProbe, ForceRecord
from hclm.forces.regimes import (
    REGIMES,
    ForceSummary,
    RegimeThresholds,
    classify_regime,
    summarize_records,
    volatility,
)
from hclm.forces.schedule import EveryK, LogSpaced

__all__ = [
    "REGIMES",
    "EveryK",
    "ForceProbe",
    "ForceRecord",
    "ForceSummary",
    "LogSpaced",
    "RegimeThresholds",
    "classify_regime",
    "summarize_records",
    "volatility",
]
