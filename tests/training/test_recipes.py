"""Packaged training recipes (issue 39 item 11): each validates, resolves by name from anywhere,
is listed by ``--list-configs``, and has a name of its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from smoothinf.cli import build_parser, main
from smoothinf.cli.train import config_from_args
from smoothinf.errors import ConfigError
from smoothinf.recipes import RECIPES_DIR, describe, recipe_names, recipe_path, resolve_config
from smoothinf.training.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
NAMES = recipe_names()


def _is_train_yaml(path: Path) -> bool:
    """A ``smoothinf train`` config (the study's ``study.yaml`` and the ``eval_*`` configs are not)."""
    return path.name != "study.yaml" and not path.name.startswith("eval_")


def test_the_package_holds_the_recipes():
    """Schema, not values: every YAML file of the package is a recipe, named <data>_<what it trains>."""
    assert sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) == NAMES
    assert {"mnist_pgd_at", "cifar10_wrn34_10_pniw_pgd_at", "paper_cifar10_wrn34_10_pniw"} <= set(NAMES)
    for name in NAMES:
        data = TrainConfig.from_yaml(name).data
        assert name.removeprefix("paper_").startswith(data), f"{name} trains on {data}"
    assert recipe_path("mnist_pgd_at") == RECIPES_DIR / "mnist_pgd_at.yaml"
    assert recipe_path("mnist_pgd_at.yaml") == RECIPES_DIR / "mnist_pgd_at.yaml"


@pytest.mark.parametrize("name", NAMES)
def test_recipe_loads_validates_and_says_what_it_trains(name):
    cfg = TrainConfig.from_yaml(name)
    assert cfg == TrainConfig.from_yaml(RECIPES_DIR / f"{name}.yaml")
    cfg.init = None  # a fine-tuning's checkpoint is another recipe's output (see below)
    cfg.validate()
    text = describe(name)
    assert 20 <= len(text) <= 100 and "\n" not in text


def test_fine_tunings_start_from_another_recipes_output():
    cfgs = {n: TrainConfig.from_yaml(n) for n in NAMES}
    outs = {cfg.out: n for n, cfg in cfgs.items()}
    inits = {n: cfg.init for n, cfg in cfgs.items() if cfg.init}
    assert len(inits) == 7  # mnist_cni_w, three fine-tunings of each CIFAR-10 ResNet-20 base
    for name, init in inits.items():
        assert str(Path(init).parent) in outs, f"{name}: init {init} is no recipe's out"
        assert outs[str(Path(init).parent)] != name
    assert len(outs) == len(NAMES)  # no two recipes write the same run folder


def test_cli_config_name_resolves_to_the_packaged_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside a checkout
    args = build_parser().parse_args(["train", "--config", "mnist_pgd_at", "--epochs", "1"])
    cfg = config_from_args(args)
    packaged = TrainConfig.from_yaml(RECIPES_DIR / "mnist_pgd_at.yaml")
    assert cfg == dataclasses.replace(packaged, epochs=1) and packaged.epochs == 10
    # a file of that name in the working folder wins over the recipe, as does any path to a file
    Path("mnist_pgd_at.yaml").write_text("data: synthetic\nepochs: 2\n")
    assert resolve_config("mnist_pgd_at.yaml") == Path("mnist_pgd_at.yaml")
    assert TrainConfig.from_yaml("mnist_pgd_at.yaml").data == "synthetic"
    assert TrainConfig.from_yaml(tmp_path / "mnist_pgd_at.yaml").epochs == 2
    assert TrainConfig.from_yaml("mnist_pgd_at").data == "mnist"


def test_list_configs_lists_every_recipe(capsys):
    assert main(["train", "--list-configs"]) == 0
    head, *lines = capsys.readouterr().out.splitlines()
    assert head.startswith(f"{len(NAMES)} recipes in {RECIPES_DIR}")
    assert [line.split()[0] for line in lines] == NAMES
    assert [line.split(maxsplit=1)[1] for line in lines] == [describe(n) for n in NAMES]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("mnist_pgdat", ["no config file or recipe named 'mnist_pgdat'", "did you mean mnist_pgd_at?"]),
        ("no_such_recipe", ["no config file or recipe named 'no_such_recipe'"]),
        ("configs/mnist_pgd_at.yaml", ["config file configs/mnist_pgd_at.yaml not found"]),
    ],
)
def test_unknown_config_is_a_one_line_error(config, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", config, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words)
    assert err[0].endswith("`smoothinf train --list-configs` lists the recipes")
    with pytest.raises(ConfigError):
        resolve_config(config)


def test_no_two_recipes_share_a_name_or_a_recipe():
    """Training YAMLs across the package and the repository's configs/ folders: unique names, and
    no recipe copied under a second name (equal up to comments and ``out``)."""
    study_configs = [*(ROOT / "configs").rglob("*.yaml"), *(ROOT / "studies").glob("*/configs/*.yaml")]
    paths = [p for p in [*RECIPES_DIR.rglob("*.yaml"), *study_configs] if _is_train_yaml(p)]
    stems = [p.stem for p in paths]
    assert len(paths) > len(NAMES) and len(set(stems)) == len(stems)
    # outside the package, the repository keeps only the studies' own configs and evaluation configs
    assert {p.parent.parent.parent.name for p in paths if not p.is_relative_to(RECIPES_DIR)} == {"studies"}
    bodies = [{k: v for k, v in yaml.safe_load(p.read_text()).items() if k != "out"} for p in paths]
    assert all(a != b for i, a in enumerate(bodies) for b in bodies[i + 1 :])
