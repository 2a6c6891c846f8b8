"""Bridges to Lightning, TensorBoard and MLflow; each needs its optional extra.

Importing this package imports none of the optional packages. Import the parts directly::

    from hclm.integrations.lightning import ForceProbeCallback   # pip install "hclm[lightning]"
    from hclm.integrations.loggers import MLflowSink, TensorBoardSink

The sinks import TensorBoard or MLflow when they are created.
"""

from hclm.integrations.loggers import (
    MetricSink,
    MLflowSink,
    TensorBoardSink,
    log_run_to,
    log_step,
    sinks_from_config,
)

__all__ = ["MLflowSink", "MetricSink", "TensorBoardSink", "log_run_to", "log_step", "sinks_from_config"]
