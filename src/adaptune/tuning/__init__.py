"""Hyper-parameter search over a run config (``adaptune tune``), on optuna: the ``tune`` extra.

The YAML's ``search:`` block (:class:`SearchConfig`) names the config keys to vary and their ranges; :func:`tune`
runs one training per trial, prunes the trials that fall behind, keeps the study in SQLite so that a second call
resumes it, and writes the best trial's config (``best.yaml``), the trial tables and the plots.
"""

from adaptune.tuning.space import ParamSpace, SearchConfig
from adaptune.tuning.study import PruningCallback, TuneResult, tune

__all__ = ["ParamSpace", "PruningCallback", "SearchConfig", "TuneResult", "tune"]
