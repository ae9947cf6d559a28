"""Every bad input: exit code 2, one line naming the problem, no output file created or changed.

One workspace (tiny synthetic runs, a results file, a certify table) is built once; each row of the
table runs one bad command line against it and compares a snapshot of every file before and after.
"""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from smoothinf.cli import main
from smoothinf.errors import SmoothinfError

EVAL_GRID = [
    "--attacks",
    "pgd",
    "--steps",
    "2",
    "--votes",
    "hard",
    "--sigmas",
    "0.1",
    "--ms",
    "2",
    "--eps",
    "0.1",
    "--runs",
    "1",
    "--max-examples",
    "8",
    "--check-examples",
    "0",  # cross-checks off: these tests are about errors, not checks
    "--device",
    "cpu",
]
CERT = ["--sigma", "0.25", "--n0", "5", "--n", "20", "--max-examples", "4", "--examples-per-step", "3"]


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--data", "synthetic", "--epochs", "1", "--lr", "3e-3", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace of finished artefacts that the bad commands must leave untouched."""
    from smoothinf.data import get_dataset_info
    from smoothinf.models import create_model_for, save_checkpoint

    ws = tmp_path_factory.mktemp("ws")
    assert main(_train_args(ws / "run", "--device", "cpu")) == 0
    ckpt = ws / "run" / "model.safetensors"
    shutil.copytree(ws / "run", ws / "torn")
    last = (ws / "torn" / "last.pt").read_bytes()
    (ws / "torn" / "last.pt").write_bytes(last[: len(last) // 2])
    mnist = create_model_for("mnist_cnn_small", get_dataset_info("mnist"))
    save_checkpoint(ws / "mnist.safetensors", mnist, {"dataset": "mnist"})
    data = ckpt.read_bytes()
    (ws / "cut.safetensors").write_bytes(data[: len(data) - 100])
    shutil.copy(str(ckpt) + ".json", ws / "cut.safetensors.json")
    torch.save({k: v.clone() for k, v in mnist.state_dict().items()}, ws / "legacy.pt")
    side = json.loads((ws / "mnist.safetensors.json").read_text())
    side["normalization"]["std"] = [0.0]
    shutil.copy(ws / "mnist.safetensors", ws / "std0.safetensors")
    (ws / "std0.safetensors.json").write_text(json.dumps(side))
    assert main(["certify", "-c", str(ckpt), *CERT, "--out", str(ws / "cert.tsv"), "--device", "cpu"]) == 0
    shutil.copy(ws / "cert.tsv", ws / "old.tsv")  # a table without its provenance sidecar
    assert main(["evaluate", "-c", str(ckpt), *EVAL_GRID, "--results", str(ws / "r.jsonl")]) == 0
    (ws / "plain.pkl").write_bytes(pickle.dumps({"w": 1}, protocol=4))
    rows = [json.loads(line) for line in (ws / "r.jsonl").read_text().splitlines()]
    rows[1]["fingerprint"] = "0123456789abcdef"  # as an older smoothinf could append
    (ws / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ws / "keys.jsonl").write_text(json.dumps({"run": 0, "vote": "hard"}) + "\n")
    (ws / "note.txt").write_text("a note, one line without a final newline")
    (ws / "bin.yaml").write_bytes(bytes(range(256)) * 4)
    (ws / "bin.jsonl").write_bytes(b"\x00\xff\xfe\x01 binary\n")
    for name, value in (("high", "high"), ("750", 7.5)):
        (ws / f"clean_{name}.jsonl").write_text(json.dumps(rows[0] | {"clean": value}) + "\n")
    shutil.copytree(ws / "run", ws / "evil")  # a last.pt whose pickle would run code on load
    (ws / "evil" / "last.pt").write_bytes(pickle.dumps({"model": _RunsCode()}, protocol=2))
    for name, text in {
        "epochs_str.yaml": 'data: synthetic\nepochs: "two"\n',
        "epochs_float.yaml": "data: synthetic\nepochs: 1.5\n",
        "lr.yaml": "data: synthetic\nlr: fast\n",
        "amp.yaml": 'data: synthetic\namp: "no"\n',
        "sigmas.yaml": "sigmas: 0.1\n",
        "runs.yaml": 'runs: "1"\n',
        "attacks.yaml": "attacks: pgd\n",
    }.items():
        (ws / name).write_text(text)
    return ws


class _RunsCode:
    """Pickles as a call of ``os.system``: what a malicious training state holds."""

    def __reduce__(self):
        import os

        return (os.system, ("echo never run",))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# (name, argv, words the one-line message must contain); argv placeholders: {ws} the workspace,
# {ck} its synthetic checkpoint, {mn} an MNIST-shaped one, {C} certify flags, {T} train flags, {E}
# the evaluation grid.
CASES = [
    ("max-examples negative", "evaluate -c {ck} --max-examples -5", ["--max-examples", ">= 1"]),
    ("max-examples zero", "evaluate -c {ck} --max-examples 0", ["--max-examples"]),
    ("predict zero", "predict -c {ck} --sigma 0.1 --max-examples 0", ["--max-examples"]),
    ("predict m zero", "predict -c {ck} --sigma 0.1 --m 0", ["--m"]),
    ("certify skip 0", "certify -c {ck} --sigma 0.1 --skip 0 --out {ws}/new.tsv", ["--skip"]),
    ("certify skip -1", "certify -c {ck} --sigma 0.1 --skip -1 --out {ws}/new.tsv", ["--skip"]),
    ("certify n 0", "certify -c {ck} --sigma 0.1 --n 0 --out {ws}/new.tsv", ["--n"]),
    ("certify sigma 0", "certify -c {ck} --sigma 0 --out {ws}/new.tsv", ["--sigma"]),
    ("certify alpha", "certify -c {ck} --sigma 0.1 --alpha 2 --out {ws}/new.tsv", ["--alpha"]),
    (
        "max-train-examples",
        "train --data synthetic --max-train-examples 0 --out {ws}/new",
        ["max_train_examples"],
    ),
    ("threads 0", "evaluate -c {ck} --threads 0", ["--threads"]),
    ("yaml epochs str", "train --config {ws}/epochs_str.yaml --out {ws}/new", ["epochs", "integer"]),
    ("yaml epochs float", "train --config {ws}/epochs_float.yaml --out {ws}/new", ["epochs", "1.5"]),
    ("yaml lr", "train --config {ws}/lr.yaml --out {ws}/new", ["lr", "number"]),
    ("yaml amp", "train --config {ws}/amp.yaml --out {ws}/new", ["amp", "true/false"]),
    ("yaml sigmas", "evaluate -c {ck} --config {ws}/sigmas.yaml --results {ws}/n.jsonl", ["sigmas", "list"]),
    ("yaml runs", "evaluate -c {ck} --config {ws}/runs.yaml --results {ws}/n.jsonl", ["runs", "integer"]),
    (
        "yaml attacks",
        "evaluate -c {ck} --config {ws}/attacks.yaml --results {ws}/n.jsonl",
        ["attacks", "list"],
    ),
    ("data vs mnist model", "evaluate -c {mn} --data synthetic", ["(N, 1, 28, 28)", "12"]),
    ("predict data vs model", "predict -c {mn} --data synthetic --sigma 0.1", ["(N, 1, 28, 28)"]),
    (
        "certify data vs model",
        "certify -c {mn} --data synthetic --sigma 0.1 --out {ws}/new.tsv",
        ["input_size 28x28"],
    ),
    ("attack data vs model", "attack --checkpoint {mn} --data synthetic --attack fgsm", ["(N, 1, 28, 28)"]),
    (
        "protocol data vs model",
        "evaluate -c {mn} --data synthetic --attacks pgd --results {ws}/n.jsonl",
        ["28"],
    ),
    ("train init other data", "train --data synthetic --init {mn} --out {ws}/new", ["(N, 1, 28, 28)"]),
    ("refused pickle", "models info -c {ws}/plain.pkl", ["refused to unpickle"]),
    ("device meta", "evaluate -c {ck} --device meta", ["meta"]),
    ("resume torn last.pt", "{T} --out {ws}/torn --resume", ["last.pt", "truncated"]),
    ("resume other model", "{T} --model mnist_cnn --out {ws}/run --resume", ["model", "mnist_cnn"]),
    ("resume other lr", "train --data synthetic --epochs 2 --lr 0.5 --out {ws}/run --resume", ["lr", "0.5"]),
    ("resume other seed", "{T} --seed 3 --out {ws}/run --resume", ["seed"]),
    ("resume other objective", "{T} --objective trades --out {ws}/run --resume", ["objective"]),
    (
        "train into a run",
        "train --data synthetic --epochs 1 --out {ws}/run",
        ["already holds", "--resume", "--overwrite"],
    ),
    ("resume and overwrite", "train --data synthetic --out {ws}/run --resume --overwrite", ["exclude"]),
    ("report bad keys", "report {ws}/keys.jsonl --out {ws}/rep", ["missing", "'sigma'"]),
    ("report mixed runs", "report {ws}/mixed.jsonl --out {ws}/rep", ["mixes results of 2"]),
    ("models info cut", "models info -c {ws}/cut.safetensors", ["sha256"]),
    ("no sidecar hint", "evaluate -c {ws}/legacy.pt", ["models convert"]),
    ("sidecar std 0", "evaluate -c {ws}/std0.safetensors --data mnist", ["std", "> 0"]),
    (
        "attack sigma without smooth",
        "attack --checkpoint {ck} --attack fgsm --sigma 0.1",
        ["--sigma", "--smooth"],
    ),
    ("attack m without smooth", "attack --checkpoint {ck} --attack fgsm --m 4", ["--m", "--smooth"]),
    (
        "attack smooth without sigma",
        "attack --checkpoint {ck} --attack fgsm --smooth",
        ["--smooth needs --sigma"],
    ),
    ("certify other sigma", "certify -c {ck} --sigma 0.5 {C} --out {ws}/cert.tsv", ["sigma", "0.25", "0.5"]),
    (
        "certify other checkpoint",
        "certify -c {mn} --data mnist --sigma 0.25 {C} --out {ws}/cert.tsv",
        ["weights_sha256"],
    ),
    ("certify other split", "certify -c {ck} --split val --sigma 0.25 {C} --out {ws}/cert.tsv", ["data.s"]),
    # --examples-per-step and --batch-size change no row (draws keyed by example): a resume may
    # change them (tests/cli/test_certify_keyed.py); the seed changes every row
    ("certify other seed", "certify -c {ck} --sigma 0.25 {C} --seed 7 --out {ws}/cert.tsv", ["seed = 0"]),
    (
        "certify fewer examples",
        "certify -c {ck} --sigma 0.25 --n0 5 --n 20 --max-examples 2"
        " --examples-per-step 3 --out {ws}/cert.tsv",
        ["--max-examples 4"],
    ),
    (
        "certify table without provenance",
        "certify -c {ck} --sigma 0.25 {C} --out {ws}/old.tsv",
        ["without a record"],
    ),
    (
        "evaluate other steps",
        "evaluate -c {ck} --results {ws}/r.jsonl {E} --steps 3",
        ["settings.steps"],
    ),
    (
        "evaluate other examples",
        "evaluate -c {ck} --results {ws}/r.jsonl {E} --max-examples 9",
        ["data.examples"],
    ),
    ("evaluate other seed", "evaluate -c {ck} --seed 4 --results {ws}/r.jsonl {E}", ["settings.seed"]),
    (
        "evaluate without the tempered attacks",
        "evaluate -c {ck} --results {ws}/r.jsonl {E} --temperatures",
        ["settings.temperatures"],
    ),
    # issue 43: outputs checked before the work, one line for every file-system problem
    ("results folder", "evaluate -c {ck} {E} --results {ws}", ["--results", "is a folder"]),
    ("results under a file", "evaluate -c {ck} {E} --results {ws}/note.txt/r.jsonl", ["note.txt is a file"]),
    (
        "report-dir a file",
        "evaluate -c {ck} {E} --results {ws}/n.jsonl --report-dir {ws}/note.txt",
        ["--report-dir"],
    ),
    ("report out a file", "report {ws}/r.jsonl --out {ws}/note.txt", ["--out", "not a folder"]),
    ("report a folder", "report {ws}", ["is a folder", "results file"]),
    ("certify out a folder", "certify -c {ck} --sigma 0.25 {C} --out {ws}", ["--out", "is a folder"]),
    (
        "certify out a device",
        "certify -c {ck} --sigma 0.25 {C} --out /dev/full",
        ["/dev/full", "regular file"],
    ),
    ("train out under a file", "train --data synthetic --out {ws}/note.txt/run", ["note.txt is a file"]),
    (
        "attack save-adv under a file",
        "attack --checkpoint {ck} --attack fgsm --save-adv {ws}/note.txt/adv.safetensors",
        ["--save-adv", "note.txt is a file"],
    ),
    (
        "attack save-adv over its checkpoint",
        "attack --checkpoint {ck} --attack fgsm --save-adv {ck} --overwrite",
        ["--save-adv", "the --checkpoint under attack"],
    ),
    (
        "attack save-adv over a file",
        "attack --checkpoint {ck} --attack fgsm --save-adv {ws}/mnist.safetensors",
        ["already exists", "--overwrite"],
    ),
    (
        "transfer source of another input shape",
        "attack --checkpoint {mn} --data mnist --attack transfer --source-checkpoint {ck} --max-examples 4",
        ["--source-checkpoint", "(N, 1, 12, 12)"],
    ),
    # issue 43: files that are not what they should be
    (
        "results a note",
        "evaluate -c {ck} {E} --results {ws}/note.txt",
        ["note.txt:1", "not a smoothinf results"],
    ),
    ("binary config", "train --config {ws}/bin.yaml --out {ws}/new", ["bin.yaml", "UTF-8"]),
    ("binary results", "report {ws}/bin.jsonl --out {ws}/rep", ["bin.jsonl:1", "UTF-8"]),
    (
        "clean high",
        "report {ws}/clean_high.jsonl --out {ws}/rep",
        ["clean_high.jsonl:1", "'clean'", "[0, 1]"],
    ),
    ("clean 7.5", "report {ws}/clean_750.jsonl --out {ws}/rep", ["'clean'", "7.5"]),
    ("malicious last.pt", "{T} --out {ws}/evil --resume", ["last.pt", "refused", "--overwrite"]),
    ("sigmas inf", "evaluate -c {ck} {E} --sigmas inf --results {ws}/n.jsonl", ["--sigmas", "finite"]),
    (
        "evaluate repeated temperature",
        "evaluate -c {ck} --results {ws}/new.jsonl {E} --temperatures 0.5 0.5",
        ["temperatures must be distinct"],
    ),
]


def _expand(argv: str, ws: Path) -> str:
    flags = {"C": "--n0 5 --n 20 --max-examples 4 --examples-per-step 3", "E": " ".join(EVAL_GRID)}
    flags["T"] = "train --data synthetic --epochs 2 --lr 3e-3"
    argv = argv.format(ws="{ws}", ck="{ws}/run/model.safetensors", mn="{ws}/mnist.safetensors", **flags)
    return argv.format(ws=ws)


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(ws, capsys, argv, words):
    before = _snapshot(ws)
    capsys.readouterr()
    try:
        code = main(_expand(argv, ws).split())
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    for word in words:
        assert word in err[0], err[0]
    assert _snapshot(ws) == before, "a refused command must not create or change any file"


def test_evaluate_refuses_replaced_weights_naming_the_hash(ws, tmp_path, capsys):
    """The issue's case: the checkpoint file replaced by another model, same path, --runs 2."""
    from smoothinf.models import load_checkpoint, save_checkpoint

    ckpt = tmp_path / "m.safetensors"
    shutil.copy(ws / "run" / "model.safetensors", ckpt)
    shutil.copy(ws / "run" / "model.safetensors.json", str(ckpt) + ".json")
    results = tmp_path / "r.jsonl"
    assert main(["evaluate", "-c", str(ckpt), *EVAL_GRID, "--results", str(results)]) == 0
    model, meta = load_checkpoint(ckpt)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_checkpoint(ckpt, model, {"dataset": "synthetic"})
    kept = results.read_bytes()
    capsys.readouterr()
    assert main(["evaluate", "-c", str(ckpt), *EVAL_GRID, "--runs", "2", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights_sha256" in err[0]
    assert results.read_bytes() == kept


def test_python_entry_points_check_input_shape_dtype_and_empty():
    from smoothinf import SmoothedClassifier
    from smoothinf.attacks import robust_accuracy
    from smoothinf.data import get_dataset_info
    from smoothinf.models import create_model_for
    from smoothinf.smoothing import certify

    model = create_model_for("mnist_cnn_small", get_dataset_info("mnist")).eval()
    smoothed = SmoothedClassifier(model, 0.1, 2)
    bad = {
        "(N, 1, 28, 28)": torch.rand(2, 3, 28, 28),
        "input_size 28x28": torch.rand(2, 1, 32, 32),
        "float64": torch.rand(2, 1, 28, 28, dtype=torch.float64),
        "empty batch": torch.rand(0, 1, 28, 28),
    }
    for word, x in bad.items():
        y = torch.zeros(x.shape[0], dtype=torch.long)
        for call in (
            lambda x=x: smoothed.predict(x),
            lambda x=x: certify(model, x, 0.1, 2, 4),
            lambda x=x, y=y: robust_accuracy(model, x, y, {}),
            lambda x=x, y=y: robust_accuracy(smoothed, x, y, {}),
        ):
            with pytest.raises(SmoothinfError, match=word.replace("(", r"\(").replace(")", r"\)")):
                call()
    with pytest.raises(SmoothinfError, match=r"labels must lie in \[0, 10\)"):
        robust_accuracy(model, torch.rand(2, 1, 28, 28), torch.tensor([0, 10]), {})


def test_threads_flag_and_omp_num_threads(ws, monkeypatch, capsys):
    from smoothinf.cli import set_threads

    before = torch.get_num_threads()
    try:
        assert main(["evaluate", "-c", str(ws / "run" / "model.safetensors"), "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(None) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "lots")
        assert set_threads(None) is None  # an unusable value leaves torch's setting alone
        assert set_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_attack_data_root_is_a_deprecated_alias(ws, capsys):
    ckpt = str(ws / "run" / "model.safetensors")
    args = ["attack", "--checkpoint", ckpt, "--attack", "fgsm", "--max-examples", "4", "--json"]
    assert main([*args, "--data-root", str(ws)]) == 0
    captured = capsys.readouterr()
    assert "deprecated" in captured.err and json.loads(captured.out.splitlines()[-1])["n"] == 4
    assert main([*args, "--root", str(ws)]) == 0
    assert "deprecated" not in capsys.readouterr().err


def test_attack_square_from_the_command_line(ws, capsys):
    """`smoothinf attack --attack square` runs the Square attack with --max-queries queries."""
    ckpt = str(ws / "run" / "model.safetensors")
    args = ["attack", "--checkpoint", ckpt, "--attack", "square", "--max-examples", "4", "--json"]
    assert main([*args, "--max-queries", "20", "--eps", "0.3"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["n"] == 4 and out["robust_accuracy"] <= out["clean_accuracy"]


def test_refused_pickle_raises_without_a_torch_warning(ws):
    from smoothinf.errors import CheckpointError
    from smoothinf.models.legacy import read_torch_file

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="refused to unpickle"):
            read_torch_file(ws / "plain.pkl")
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize(
    "bad",
    [{"seconds": "12 s"}, {"attack_time": {"pgd": {"seconds": 1.0}}}, {"attack_time": ["pgd"]}],
)
def test_report_refuses_a_record_with_malformed_wall_times(tmp_path, capsys, bad):
    record = {
        "run": 0,
        "vote": "none",
        "sigma": 0.0,
        "m": 1,
        "eps": 0.1,
        "n": 4,
        "clean": 1.0,
        "attacks": {"pgd": 0.5},
        "worst_case": 0.5,
        "fingerprint": "f",
        "config": {},
        "seconds": 3.0,
        "attack_time": {"pgd": {"examples": 4, "seconds": 1.0}},
    }
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(record) + "\n")
    from smoothinf.evaluation import read_results

    assert read_results(good)[0]["attack_time"]["pgd"]["examples"] == 4
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record | bad) + "\n")
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.jsonl:1: 'seconds' must be a number" in err
