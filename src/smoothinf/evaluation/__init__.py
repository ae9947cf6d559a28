"""Evaluation protocol (repeated runs, worst case over attacks), results store, reports, quickstart.

``evaluate(model, x, y, eps=...)`` rates one model and returns a ``Report``; ``evaluate(model, x, y,
config=EvalConfig(...), results=path)`` runs a config's grid, resumable (``smoothinf evaluate``,
the quickstart, the zoo's cards, the studies)."""

from smoothinf.evaluation.config import EVAL_ATTACKS, EvalConfig
from smoothinf.evaluation.protocol import build_attacks, build_defended, evaluate_row
from smoothinf.evaluation.report import aggregate, markdown_table, write_report
from smoothinf.evaluation.results import ResultsStore, evaluation_identity, read_results, weights_digest
from smoothinf.evaluation.sanity import Check, run_sanity_checks
from smoothinf.evaluation.sweeps import ComputeSweepConfig, compute_sweep, write_compute_report
from smoothinf.evaluation.verdict import Report, Row, evaluate

__all__ = [
    "EVAL_ATTACKS",
    "Check",
    "ComputeSweepConfig",
    "EvalConfig",
    "Report",
    "ResultsStore",
    "Row",
    "aggregate",
    "build_attacks",
    "build_defended",
    "compute_sweep",
    "evaluate",
    "evaluate_row",
    "evaluation_identity",
    "markdown_table",
    "read_results",
    "run_sanity_checks",
    "weights_digest",
    "write_compute_report",
    "write_report",
]
