"""BENCHMARKS.md is generated: benchmarks/build_page.py rebuilds it from benchmarks/page_notes.md and
the committed results files, and it holds speed and scale only (the attack-strength studies live in
docs/attack-strength.md). Runs no benchmark."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "BENCHMARKS.md"
STRENGTH = ROOT / "docs" / "attack-strength.md"
MOVED = (
    "Convergence of the `default` attack preset",
    "Judging a randomised classifier once per attack",
    "Steps or draws?",
    "Restarts on the headline row",
    "Tempered APGD-CE",
    "Does AutoAttack find more after the study?",
    "Has Square converged on the deterministic rows?",
    "Longer training",
    "MNIST PGD-AT re-measured on the GPU",
    "Single-step adversarial training and the CO guard",
)


def _build_page():
    spec = importlib.util.spec_from_file_location("build_page", ROOT / "benchmarks" / "build_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_is_built_from_the_results_files():
    build_page = _build_page()
    assert build_page.build() == PAGE.read_text(), (
        "BENCHMARKS.md is not what benchmarks/build_page.py builds from benchmarks/page_notes.md and "
        "benchmarks/results/*.md: edit those and run python benchmarks/build_page.py"
    )


def test_check_mode_agrees(capsys):
    assert _build_page().main(["--check"]) == 0


def test_page_holds_no_attack_strength_study():
    headings = [line for line in PAGE.read_text().splitlines() if line.startswith("#")]
    for title in MOVED:
        assert not any(title in h for h in headings), f"{title!r} belongs in docs/attack-strength.md"
    strength = [line for line in STRENGTH.read_text().splitlines() if line.startswith("## ")]
    for title in MOVED:
        assert any(title in h for h in strength), f"{title!r} is missing from docs/attack-strength.md"
    assert "docs/attack-strength.md" in PAGE.read_text()


def test_prose_numbers_must_come_from_results_files(tmp_path):
    build_page = _build_page()
    results = tmp_path / "results"
    results.mkdir()
    (results / "speed.md").write_text("# Speed\n\nMachine: x.\n\n| a | ratio |\n|---|---|\n| b | 1.234x |\n")
    notes = tmp_path / "notes.md"
    notes.write_text(
        "<!--- template only -->\n# Page\n\n<!-- include results/speed.md table -->\n\nIt runs 1.23x.\n"
    )
    page = build_page.build(notes, results)
    assert page == "# Page\n\n| a | ratio |\n|---|---|\n| b | 1.234x |\n\nIt runs 1.23x.\n"
    notes.write_text("# Page\n\n<!-- include results/speed.md -->\n\nIt runs 1.5x.\n")
    with pytest.raises(build_page.PageError, match="1.5"):
        build_page.build(notes, results)
    notes.write_text('# Page\n\n<!-- include results/speed.md section="Nothing" -->\n')
    with pytest.raises(build_page.PageError, match="no section"):
        build_page.build(notes, results)
