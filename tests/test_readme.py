"""The README's Python snippets run as written, in order, on the embedded MNIST."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[str]:
    """The ```python blocks of the README, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_is_a_product_page():
    text = README.read_text()
    assert len(text.encode()) <= 10_500
    assert "make demo" in text and "make test" in text
    assert len(snippets()) == 4


def test_the_readme_snippets_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in snippets():
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    report = namespace["report"]
    assert (tmp_path / "runs/readme/report.json").exists()
    assert report.robust.shape == (100,) and 0 <= float(report.robust.min()) <= 1
    radius = namespace["radius"]
    assert radius.shape == (50,) and float(radius.max()) > 0
    out = capsys.readouterr().out
    assert "| setting | eps | runs | clean |" in out
    assert re.search(r"tensor\(0\.\d+\)", out)  # the smoothed accuracy
