"""The pretrained zoo: shipped cards agree with the shipped weights and point to their records; the
card command measures what is missing; loading refuses changed weights; ``models convert`` does
not silently replace a checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import smoothinf.zoo as zoo
from smoothinf.cli import main as cli_main
from smoothinf.errors import CheckpointError, ConfigError
from smoothinf.evaluation.results import read_results
from smoothinf.models import create_model, save_checkpoint
from smoothinf.zoo.cards import FIGURES, clean_accuracy, missing_fields, training_seconds

SHIPPED = zoo.names()


def test_zoo_ships_the_studied_models():
    assert {"mnist_cnn_small_pgd_at_6ep", "mnist_cnn_small_pni_w_pgd_at_30ep"} <= set(SHIPPED)
    total = sum(p.stat().st_size for p in zoo.ZOO_DIR.rglob("*") if p.is_file())
    assert total < 20 * 2**20  # the whole zoo stays under about 20 MB


@pytest.mark.parametrize("name", SHIPPED)
def test_card_is_complete_and_points_to_its_records(name):
    card = zoo.card(name)
    assert missing_fields(card) == []
    weights = card["weights"]
    assert (zoo.ZOO_DIR / weights["file"]).is_file()
    for field in ("command", "config", "epochs", "wall_seconds", "machine"):
        assert card["training"][field] not in (None, ""), field
    for field in FIGURES:
        figure = card[field]
        if figure is None:
            continue
        values = figure["value"].values() if isinstance(figure["value"], dict) else [figure["value"]]
        assert all(0.0 <= v <= 1.0 for v in values), field
        path = zoo.ZOO_DIR / figure["records"]["file"]
        assert path.is_file(), (field, path)
        if "fingerprint" in figure["records"]:  # protocol records: that fingerprint, these weights
            records = read_results(path, key=None)
            assert any(r["fingerprint"] == figure["records"]["fingerprint"] for r in records)
            assert {r["identity"]["weights_sha256"] for r in records} <= {
                weights["sha256"],
                weights["tensor_sha256"],
            }
            assert figure["images"]["count"] == records[0]["n"]
            assert figure["runs"] and figure["budget"]
        else:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            assert any(r["weights_sha256"] == weights["tensor_sha256"] for r in rows)
    assert card["autoattack"]["images"]["sha256"] == card["worst_case"]["images"]["sha256"]


@pytest.mark.parametrize("name", SHIPPED)
def test_card_clean_accuracy_matches_the_shipped_weights(name):
    from smoothinf.data import load_dataset

    card = zoo.card(name)
    model = zoo.load(name)
    x, y = load_dataset("mnist", "test")[0].tensors(1000)
    figure = card["clean_first_1000"]
    got = sum(clean_accuracy(model, x, y, figure["draws"], seed=1)) / figure["draws"]
    assert abs(got - figure["value"]) <= 0.005


def _tiny_zoo(tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(zoo.ZOO_DIR / "cards", root / "cards")
    shutil.copytree(zoo.ZOO_DIR / "weights", root / "weights")
    return root


def test_load_refuses_changed_weights(tmp_path):
    name = "mnist_cnn_small_pgd_at_6ep"
    root = _tiny_zoo(tmp_path)
    assert zoo.load(name, root=root)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    card_file = zoo.card_path(name, root)
    card = json.loads(card_file.read_text())
    card["weights"]["tensor_sha256"] = "0" * 64
    card_file.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="tensor digest") as err:
        zoo.load(name, root=root)
    assert "\n" not in str(err.value)
    weights = zoo.weights_path(name, root)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        zoo.load(name, root=root)
    with pytest.raises(ConfigError, match="no zoo model"):
        zoo.load("nope", root=root)


def test_training_seconds_sums_resumed_segments():
    rows = [{"seconds": 10.0}, {"seconds": 20.0}, {"seconds": 5.0}, {"seconds": 12.0}]
    assert training_seconds(rows) == 32.0
    assert training_seconds([]) is None


def _linear_checkpoint(tmp_path, sigma=0.0, seed=0):
    torch.manual_seed(seed)
    model = create_model("linear", 10, 1, (0.1307,), (0.3081,))
    training = {"objective": "gaussian" if sigma else "standard", "sigma": sigma, "eps": 0.3, "epochs": 1}
    meta = {"dataset": "mnist", "training": training, "metrics": {"epoch": 1, "seconds": 3.0}}
    folder = tmp_path / "run"
    folder.mkdir(parents=True)
    return save_checkpoint(folder / "model.safetensors", model, meta)


def test_card_command_measures_what_is_missing(tmp_path, capsys):
    ckpt = _linear_checkpoint(tmp_path, sigma=0.25)
    root = tmp_path / "zoo"
    args = ["models", "card", str(ckpt), "--name", "tiny", "--zoo", str(root), "--examples", "3"]
    args += ["--sigmas", "0.25", "--ms", "4", "--certify-n", "50", "--device", "cpu", "--threads", "1"]
    assert cli_main(args) == 0, capsys.readouterr().err
    card = zoo.card("tiny", root)
    assert missing_fields(card) == [] and card["missing"] == {}
    assert card["worst_case"]["images"]["count"] == 3 and card["worst_case"]["runs"] == [0]
    assert card["best_smoothed"]["setting"] == {"vote": "hard", "sigma": 0.25, "m": 4}
    assert card["autoattack"]["version"] == "standard"
    assert card["clean"]["images"]["count"] == 10000 and card["clean_first_1000"]["images"]["count"] == 1000
    assert set(card["certified"]["value"]) == {"0.25", "0.5", "1"} and card["certified"]["n"] == 50
    assert card["weights"]["tensor_sha256"] and zoo.load("tiny", root=root) is not None
    # a second call measures nothing: every figure comes from the records it wrote
    files = {p: p.read_text() for p in (root / "records" / "tiny").glob("*.jsonl")}
    assert cli_main(args + ["--skip", "certified"]) == 0
    assert {p: p.read_text() for p in files} == files
    assert zoo.card("tiny", root)["missing"] == {"certified": "skipped (--skip)"}
    # other weights under the same name need --overwrite; records of other weights are refused
    other = _linear_checkpoint(tmp_path / "b", seed=1)
    assert cli_main(["models", "card", str(other), "--name", "tiny", "--zoo", str(root)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    foreign = next(p for p in files if p.name not in ("clean.jsonl", "certify.jsonl"))
    bad = ["models", "card", str(other), "--name", "other", "--zoo", str(root), "--records", str(foreign)]
    assert cli_main(bad) == 2
    assert "holds no records of these weights" in capsys.readouterr().err


def test_models_list_and_show(capsys):
    assert cli_main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "pretrained models" in out and "mnist_cnn_small_pgd_at_6ep" in out
    assert cli_main(["models", "list", "--zoo"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" not in out and "mnist_cnn_small_pni_w_pgd_at_30ep" in out
    assert cli_main(["models", "show", "mnist_cnn_small_pgd_at_6ep"]) == 0
    out = capsys.readouterr().out
    assert "worst case" in out and "AutoAttack standard" in out and "train again" in out
    assert cli_main(["models", "show", "mnist_cnn_small_pgd_at_6ep", "--train-config"]) == 0
    assert "objective: adversarial" in capsys.readouterr().out
    assert cli_main(["models", "show", "nope"]) == 2
    assert "no zoo model" in capsys.readouterr().err


def test_convert_refuses_to_replace_a_checkpoint(tmp_path, capsys):
    legacy = tmp_path / "net.pth"
    torch.save(create_model("linear", 10, 1, (0.1307,), (0.3081,)).state_dict(), legacy)
    out = tmp_path / "model.safetensors"
    args = ["models", "convert", "-c", str(legacy), "--arch", "linear", "--dataset", "mnist", "-o", str(out)]
    assert cli_main(args) == 0
    before = out.read_bytes(), (tmp_path / "model.safetensors.json").read_text()
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert (out.read_bytes(), (tmp_path / "model.safetensors.json").read_text()) == before
    assert cli_main(args + ["--overwrite"]) == 0


def test_the_readme_results_table_is_the_cards_table():
    """The README's results table is generated from the cards (``smoothinf.zoo.results_table``)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("<!-- zoo-table")
    table = readme[readme.index("\n", start) + 1 : readme.index("<!-- /zoo-table -->")]
    assert table == zoo.results_table()
    assert table.count("\n| [`") == len(zoo.names())


def test_a_fine_tunings_card_trains_its_zoo_starting_point_first(tmp_path):
    """``init`` matched on the tensor digest to a zoo card: the retraining command trains that
    model again first and starts from its output file; an init outside the zoo is no match."""
    import smoothinf.zoo.cards as cards
    from smoothinf.evaluation.results import weights_digest
    from smoothinf.models import load_checkpoint

    base = _linear_checkpoint(tmp_path / "a")
    other = _linear_checkpoint(tmp_path / "b", seed=1)
    root = tmp_path / "zoo"
    (root / "cards").mkdir(parents=True)
    fake = {
        "format": zoo.CARD_FORMAT,
        "weights": {"tensor_sha256": weights_digest(load_checkpoint(base)[0])},
        "training": {"output_file": "best.safetensors"},
    }
    (root / "cards" / "base.json").write_text(json.dumps(fake))
    cpu = torch.device("cpu")
    assert cards._zoo_init(str(base), root, cpu) == {"name": "base", "file": "best.safetensors"}
    assert cards._zoo_init(str(other), root, cpu) is None
    assert cards._zoo_init(None, root, cpu) is None
