"""``smoothinf certify`` draws noise keyed by example (issue 41): its rows do not depend on
--batch-size, --examples-per-step, --max-examples or --skip, and a resume may change the first two."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoothinf.cli import main
from smoothinf.noise import KEYED_STREAM
from smoothinf.training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keyed") / "run"
    small = {"max_train_examples": 1024, "eval_examples": 64}
    train(TrainConfig(data="synthetic", epochs=1, lr=3e-3, device="cpu", out=str(out), **small))
    return out / "model.safetensors"


def _args(ckpt: Path, out: Path, *extra: str) -> list[str]:
    # sigma 0.5 on a one-epoch model: a mix of classes, abstentions and radii
    base = ["certify", "-c", str(ckpt), "--sigma", "0.5", "--n0", "10", "--n", "100", "--alpha", "0.05"]
    return [*base, "--device", "cpu", "--out", str(out), *extra]


def _rows(path: Path) -> list[str]:
    """Rows as text without the time column, sorted by example index (byte-for-byte otherwise)."""
    lines = path.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    return sorted(
        ("\t".join(line.split("\t")[:5]) for line in lines[1:]), key=lambda r: int(r.split("\t")[0])
    )


def test_rows_do_not_depend_on_batch_size_or_examples_per_step(ckpt, tmp_path, capsys):
    tables = []
    for k, extra in enumerate(
        (
            ["--batch-size", "5", "--examples-per-step", "4"],
            ["--batch-size", "37", "--examples-per-step", "1"],
            [],  # default rows per forward, 16 examples per step
        )
    ):
        out = tmp_path / f"b{k}.tsv"
        assert main(_args(ckpt, out, "--max-examples", "6", *extra)) == 0
        tables.append(_rows(out))
    assert tables[0] == tables[1] == tables[2] and len(tables[0]) == 6
    radii = [float(r.split("\t")[3]) for r in tables[0]]
    assert max(radii) > 0 and len({r.split("\t")[2] for r in tables[0]}) >= 2
    identity = json.loads((tmp_path / "b0.tsv.json").read_text())
    assert identity["noise_stream"] == KEYED_STREAM == "keyed-by-example/1"
    assert "examples_per_step" not in identity and "batch_size" not in identity


def test_grown_table_with_another_batch_size_equals_a_fresh_run(ckpt, tmp_path, capsys):
    grown, fresh = tmp_path / "grown.tsv", tmp_path / "fresh.tsv"
    assert main(_args(ckpt, grown, "--max-examples", "5", "--batch-size", "16")) == 0
    # the resume changes --batch-size and --examples-per-step: accepted, the same streams
    assert (
        main(_args(ckpt, grown, "--max-examples", "10", "--batch-size", "50", "--examples-per-step", "3"))
        == 0
    )
    assert main(_args(ckpt, fresh, "--max-examples", "10")) == 0
    assert _rows(grown) == _rows(fresh) and len(_rows(fresh)) == 10


def test_skip_rows_equal_the_same_examples_of_the_full_run(ckpt, tmp_path, capsys):
    every, second = tmp_path / "every.tsv", tmp_path / "second.tsv"
    assert main(_args(ckpt, every, "--max-examples", "8", "--skip", "1")) == 0
    assert main(_args(ckpt, second, "--max-examples", "8", "--skip", "2", "--examples-per-step", "3")) == 0
    full = {int(r.split("\t")[0]): r for r in _rows(every)}
    assert _rows(second) == [full[i] for i in (0, 2, 4, 6)]


def test_a_table_of_the_old_batch_dependent_draws_is_refused(ckpt, tmp_path, capsys):
    """A table whose OUT.json predates keyed draws (examples_per_step, no noise_stream): one line,
    exit 2, nothing changed, even with the settings that wrote it."""
    out = tmp_path / "old.tsv"
    assert main(_args(ckpt, out, "--max-examples", "3")) == 0
    side = Path(str(out) + ".json")
    identity = json.loads(side.read_text())
    del identity["noise_stream"]
    identity["examples_per_step"] = 16
    side.write_text(json.dumps(identity, indent=1) + "\n")
    before = (out.read_bytes(), side.read_bytes())
    capsys.readouterr()
    assert main(_args(ckpt, out, "--max-examples", "6")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "noise drawn per block of examples" in err[0] and "start a new --out" in err[0]
    assert (out.read_bytes(), side.read_bytes()) == before
