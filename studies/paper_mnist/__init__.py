"""The paper's claims re-measured on MNIST, built on smoothinf: the resumable pipeline
(``pipeline``), its longer-training stage (``long_training``), its page (``report``) and its
description (``study``: ``configs/study.yaml``). Run it with ``python studies/paper_mnist/run.py``."""

from paper_mnist.pipeline import judge_grid, run_study
from paper_mnist.report import build_page, write_paper_report
from paper_mnist.study import StudyConfig, load_study

__all__ = ["StudyConfig", "build_page", "judge_grid", "load_study", "run_study", "write_paper_report"]
