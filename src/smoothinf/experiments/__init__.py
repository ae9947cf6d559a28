"""Studies built on the library: ``paper_mnist`` (the paper's claims re-measured on MNIST),
``paper_report`` (its markdown page) and ``step_check`` (one training step of any config)."""

from smoothinf.experiments.paper_mnist import StudyConfig, judge_grid, load_study, run_study
from smoothinf.experiments.paper_report import build_page, write_paper_report

__all__ = ["StudyConfig", "build_page", "judge_grid", "load_study", "run_study", "write_paper_report"]
