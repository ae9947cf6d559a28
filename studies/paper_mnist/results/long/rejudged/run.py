"""Issue 38's re-measurement of the long stage's PNI-W pair: one process per row kind, resumable."""

import sys

from smoothinf.evaluation.config import EvalConfig
from smoothinf.evaluation.loading import protocol_inputs
from smoothinf.evaluation.protocol import evaluate
from smoothinf.evaluation.results import ResultsStore


class VotesOnly(EvalConfig):
    def settings(self):
        return super().settings()[1:]


which, ckpt, out = sys.argv[1:4]
first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
cfg = EvalConfig.from_yaml(
    "studies/paper_mnist/results/long/rejudged/judging2.yaml", checkpoint=ckpt, first_example=first
)
if which == "base":
    cfg.votes = []
else:
    cfg = VotesOnly(**cfg.to_dict())
got, identity = protocol_inputs(cfg, "cpu")
store = ResultsStore(out, identity=identity)
evaluate(cfg, got.model, got.x, got.y, store)
print("done", len(store.records))
