"""Training recipes shipped with the package: one ``smoothinf train`` YAML per recipe, named for what
it trains (``paper_*``: the paper's setups; the others: this library's).

``smoothinf train --config NAME`` trains a recipe, ``smoothinf train --list-configs`` lists them;
a recipe's first line, a ``# ...`` comment, is its one-line description.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from smoothinf.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent
SUFFIX = ".yaml"
LIST_HINT = "`smoothinf train --list-configs` lists the recipes"


def recipe_names() -> list[str]:
    """The names of the packaged recipes, sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob(f"*{SUFFIX}"))


def recipe_path(name: str) -> Path:
    """The YAML file of recipe ``name`` (``.yaml`` optional); an unknown name is a one-line
    ConfigError naming the closest recipe."""
    stem = name.removesuffix(SUFFIX)
    path = RECIPES_DIR / f"{stem}{SUFFIX}"
    if stem and Path(stem).name == stem and path.is_file():
        return path
    close = difflib.get_close_matches(stem, recipe_names(), n=1)
    guess = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"no config file or recipe named {name!r}{guess}; {LIST_HINT}")


def describe(name: str) -> str:
    """Recipe ``name``'s one-line description: its first line when that is a ``#`` comment."""
    first = recipe_path(name).read_text().partition("\n")[0]
    return first.lstrip("#").strip() if first.startswith("#") else ""


def resolve_config(config: str | os.PathLike) -> Path:
    """A ``--config`` value as a file: an existing file as given, else a bare name (no folder) as
    the packaged recipe of that name; a missing file in a folder is a one-line ConfigError."""
    path = Path(config)
    if path.is_file():
        return path
    if path.parent == Path("."):
        return recipe_path(str(config))
    raise ConfigError(f"config file {path} not found; recipes are named without a folder: {LIST_HINT}")


def listing() -> str:
    """``--list-configs``'s text: a header line, then one ``name  description`` line per recipe."""
    names = recipe_names()
    width = max(map(len, names))
    head = f"{len(names)} recipes in {RECIPES_DIR} (train one: smoothinf train --config NAME):"
    return "\n".join([head] + [f"{name:<{width}}  {describe(name)}" for name in names])
