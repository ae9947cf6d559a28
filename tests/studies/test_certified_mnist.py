"""The certified-MNIST page (issue 42): its numbers on a hand-made run and reference, and the
committed page against what page.py makes of the committed files."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from certified_mnist.page import ACR_TOLERANCE, ROOT, build_page, certify_cap, read_runs, rebound, within
from certified_mnist.reference import rows_json

from smoothinf.evaluation.results import weights_digest
from smoothinf.models import create_model, load_checkpoint, save_checkpoint

CAP = 0.5 * NormalDist().inv_cdf(0.001 ** (1 / 10_000))  # all 10,000 draws agree


def _tsv(path: Path, rows: list[tuple], skip: int = 100, sigma: float = 0.5, n: int = 10_000) -> None:
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    lines += [f"{i}\t{y}\t{p}\t{r:.4f}\t{int(p == y)}\t0.100" for i, y, p, r in rows]
    path.write_text("\n".join(lines) + "\n")
    prov = {
        "format": "smoothinf-certify",
        "weights_sha256": "0" * 64,
        "data": {"name": "mnist", "split": "test", "sha256": "1" * 64},
        "sigma": sigma,
        "n0": 100,
        "n": n,
        "alpha": 0.001,
        "noise": "gaussian",
        "seed": 0,
        "skip": skip,
        "noise_stream": "keyed-by-example/1",
        "device": "cpu",
    }
    Path(str(path) + ".json").write_text(json.dumps(prov))


def _full_gaussian(res: Path, rows: list[tuple]) -> None:
    """A Gaussian sigma 0.5 run of the whole recipe (90 epochs) certified with N 100,000."""
    model = res / "models" / "mnist_lenet_gaussian_sigma050"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.yaml").write_text("objective: gaussian\nsigma: 0.5\nepochs: 90\nseed: 0\n")
    (model / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "epoch_loop_seconds": 30.0}) + "\n" for e in range(1, 91))
    )
    _tsv(res / "gaussian_sigma0.5.tsv", rows, n=100_000)


def _run(idx: list[int], labels: list[int], picked: dict[int, tuple[int, float]]) -> dict:
    """A reference run on ``idx``: (predict, radius) of the picked images, an abstention elsewhere."""
    got = [picked.get(i, (-1, 0.0)) for i in idx]
    return {
        "log": "fake",
        "predict": [p for p, _ in got],
        "radius": [r for _, r in got],
        "correct": [int(p == y) for (p, _), y in zip(got, labels, strict=True)],
    }


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, dict]:
    """300 test images; the reference holds idx % 20 == 0; runs certify idx % 100 == 0."""
    idx = list(range(0, 300, 20))
    labels = [i // 20 % 10 for i in idx]  # idx 0 -> 0, 100 -> 5, 200 -> 0
    y = dict(zip(idx, labels, strict=True))
    gauss = {
        "method": "gaussian",
        "sigma": 0.5,
        "idx": idx,
        "label": labels,
        "runs": [
            # run A: 1.9 (above our cap), 0.6, 0.2, all correct; idx 20 certified too (not ours)
            _run(idx, labels, {0: (0, 1.9), 100: (5, 0.6), 200: (0, 0.2), 20: (1, 1.9)}),
            # run B: 1.0 correct, idx 100 wrong (predict 2), 0.8 correct
            _run(idx, labels, {0: (0, 1.0), 100: (2, 0.7), 200: (0, 0.8)}),
        ],
    }
    cons = {
        "method": "consistency",
        "sigma": 0.5,
        "idx": idx,
        "label": labels,
        "runs": [_run(idx, labels, {i: (y[i], 0.5) for i in idx})],
    }
    other = {**cons, "method": "consistency", "sigma": 0.25}
    macer = {**cons, "method": "macer", "sigma": 0.5}
    ref = {
        "source": "https://github.com/jh-jeong/smoothmix",
        "commit": "c" * 40,
        "n0": 100,
        "n": 100_000,
        "alpha": 0.001,
        "test_images": 300,
        "subset": "idx % 20 == 0",
        "settings": {
            "gaussian/sigma_0.50": gauss,
            "consistency/sigma_0.50": cons,
            "consistency/sigma_0.25": other,
            "macer/sigma_0.50": macer,
        },
    }
    ref = json.loads(rows_json(ref))  # through the file format reference.py writes
    res = tmp_path / "results"
    (res / "models" / "mnist_lenet_gaussian_sigma050").mkdir(parents=True)
    # ours: 1.2 correct, 0.4 correct, an abstention
    _tsv(res / "gaussian_sigma0.5.tsv", [(0, 0, 0, 1.2), (100, 5, 5, 0.4), (200, 0, -1, 0.0)])
    _tsv(res / "consistency_sigma0.5.tsv", [(0, 0, 0, 1.0), (100, 5, 5, 1.0), (200, 0, 0, 1.0)])
    _tsv(res / "consistency_sigma0.25.tsv", [(0, 0, 0, 0.3), (100, 5, 5, 0.3)], sigma=0.25)  # 2 of 3
    model = res / "models" / "mnist_lenet_gaussian_sigma050"
    (model / "config.yaml").write_text(
        "objective: gaussian\nsigma: 0.5\nepochs: 8\nmilestones: [4, 7]\nseed: 0\n"
    )
    (model / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "epoch_loop_seconds": t}) + "\n" for e, t in ((1, 31.0), (2, 33.0)))
    )
    return res, ref


def test_cap_is_the_all_agree_clopper_pearson_radius():
    assert certify_cap(0.5, 10_000, 0.001) == pytest.approx(CAP, rel=1e-9)
    assert certify_cap(1.0, 100_000, 0.001) == pytest.approx(
        NormalDist().inv_cdf(0.001 ** (1 / 100_000)), rel=1e-9
    )


def test_rebound_keeps_radii_at_the_same_n_and_shrinks_them_at_a_smaller_n():
    r = [0.0, 0.3, 1.0, 1.5, 1.9, 2.5]
    same = rebound(r, 0.5, 100_000, 100_000, 0.001)
    assert same[:5] == pytest.approx([0.0, 0.3, 1.0, 1.5, 1.9], abs=1e-6)
    assert same[5] == pytest.approx(certify_cap(0.5, 100_000, 0.001))
    fewer = rebound(r, 0.5, 100_000, 10_000, 0.001)
    assert all(fewer[1:] < same[1:]) and max(fewer) == pytest.approx(CAP)


def test_numbers_on_the_same_images(study):
    res, ref = study
    done, partial = read_runs(res, ref)
    g = done["gaussian/sigma_0.50"]["result"]
    assert g["images"] == 3 and g["runs"] == 2
    assert g["ours"]["acr"] == pytest.approx((1.2 + 0.4) / 3)
    assert [g["ours"]["accuracy"][r] for r in (0.0, 0.5, 1.0, 1.5)] == pytest.approx([2 / 3, 1 / 3, 1 / 3, 0])
    # reference on idx 0, 100, 200 only (idx 20 of run A is not counted)
    assert g["ref"]["acr"]["mean"] == pytest.approx((2.7 / 3 + 1.8 / 3) / 2)
    assert (g["ref"]["acr"]["min"], g["ref"]["acr"]["max"]) == pytest.approx((0.6, 0.9))
    assert g["ref"]["accuracy"][0.0]["mean"] == pytest.approx((1 + 2 / 3) / 2)
    assert g["ref"]["accuracy"][1.0]["mean"] == pytest.approx(1 / 3)
    assert g["ref"]["accuracy"][1.5]["mean"] == pytest.approx(1 / 6)
    # capped: run A's 1.9 counts as our cap
    assert g["cap"] == pytest.approx(CAP)
    assert g["ref_capped"]["acr"]["mean"] == pytest.approx(((CAP + 0.8) / 3 + 0.6) / 2)
    assert g["ref_above_cap"] == pytest.approx((1 / 3 + 0) / 2)
    assert g["ref_rebounded"]["acr"]["mean"] < g["ref_capped"]["acr"]["mean"]
    lo, hi = g["wilson"][0.5]
    assert lo < 1 / 3 < hi
    assert done["consistency/sigma_0.50"]["result"]["ours"]["acr"] == pytest.approx(1.0)
    assert partial == {"consistency/sigma_0.25": {"images": 2, "expected": 3}}


def _points(x: float) -> str:
    """``x`` as the page writes a signed gain in points."""
    return ("−" if x < 0 and f"{abs(x):.1f}" != "0.0" else "+") + f"{abs(x):.1f}"


def _row(page: str, section: str, start: str) -> list[str]:
    """The cells of the one row of ``section`` (a "## " heading) that starts with ``start``."""
    text = page.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    [line] = [line for line in text.splitlines() if line.startswith(start)]
    return [c.strip() for c in line.strip("|").split("|")]


def test_page(study):
    res, ref = study
    page = build_page(res, ref)
    assert (
        "ACR within 0.03 of the reference for gaussian, consistency and smoothadv, within 0.05 for macer,"
        " smoothmix and smoothmix_eta5;" in page
    )
    assert "## Fine-tunes from the Gaussian model" not in page  # no fine-tune in the folder
    capped = ((CAP + 0.8) / 3 + 0.6) / 2
    g = _row(page, "Summary", "| gaussian | 0.5 |")
    assert (
        g[2:4] == ["3", "0.533"]
        and g[4] == f"{capped:.3f}"
        and g[5] == f"−{capped - 1.6 / 3:.3f}"
        and g[6] == "**not met**"
    )
    # certified-accuracy gaps in points at r = 0, 0.5, 1; r = 1.5, 2 exceed 2 sigma
    assert g[7:12] == [f"−{100 * (5 / 6 - 2 / 3):.1f}", f"−{100 * (2 / 3 - 1 / 3):.1f}", "+0.0", "-", "-"]
    c = _row(page, "Summary", "| consistency | 0.5 |")
    assert c[3:5] == ["1.000", "0.500"] and c[5] == "+0.500" and c[6] == "**not met**"
    assert c[7:10] == ["+0.0", "+0.0", "+100.0"]
    # what the run differs in, read from its files; a run without copied training files says so
    d = _row(page, "What the smoothinf runs differ in", "| gaussian | 0.5 |")
    assert d[2:7] == [
        "`mnist_lenet_gaussian_sigma050`",
        "2 of 8 (recipe 90)",
        "4, 7 (recipe 31, 61)",
        "32",
        "none",
    ]
    assert d[7] == "10,000 (100,000)" and d[10].startswith("3, idx % 100 == 0 (15, idx % 20 == 0)")
    d = _row(page, "What the smoothinf runs differ in", "| consistency | 0.5 |")
    assert d[3] == "? (no config.yaml)"
    # the cap section: ours and the reference's, computed
    cap = _row(page, "The N cap", "| gaussian | 0.5 |")
    assert cap[3] == f"{CAP:.3f}" and cap[4].startswith(f"{certify_cap(0.5, 100_000, 0.001):.3f} (N 100,000")
    assert cap[5:] == ["1.9", f"{100 / 6:.1f}%"]
    # certified accuracy with its Wilson interval, r = 1 met
    r1 = _row(page, "Certified accuracy", "| gaussian | 0.5 | 1 |")
    assert r1[3].startswith("33.3 (") and r1[6] == "+0.0" and r1[7] == "met" and r1[8] == "yes"
    assert "| gaussian | 0.5 | 1.5 |" not in page
    # not run / incomplete
    assert _row(page, "Not run", "| consistency | 0.25 |")[4] == "incomplete: 2 of 3 images"
    macer = _row(page, "Not run", "| macer | 0.5 |")
    assert macer[2] == "`mnist_lenet_macer_sigma050`" and macer[3] == "16" and macer[4] == "not run"
    assert "| gaussian | 0.25 |" not in page  # no reference rows for it in this fake
    # commands from the config and provenance
    assert (
        "python -m smoothinf train --config mnist_lenet_gaussian_sigma050 --epochs 8 --milestones 4 7" in page
    )
    assert (
        "python -m smoothinf certify -c runs/mnist_lenet_gaussian_sigma050/model.safetensors --split test"
        " --sigma 0.5 --n0 100 --n 10000 --alpha 0.001 --skip 100 --seed 0" in page
    )


def test_a_full_recipe_run_is_set_beside_the_trimmed_run_it_replaced(study):
    """The trimmed Gaussian run moves to trimmed/; a run of all 90 epochs with N 100,000 takes its
    place: the page reads it as the full recipe and tabulates trimmed, full re-bounded to the trimmed
    N, full, and the reference on the same images."""
    res, ref = study
    old = res / "trimmed"
    (old / "models").mkdir(parents=True)
    for name in ("gaussian_sigma0.5.tsv", "gaussian_sigma0.5.tsv.json"):
        (res / name).rename(old / name)
    (res / "models" / "mnist_lenet_gaussian_sigma050").rename(
        old / "models" / "mnist_lenet_gaussian_sigma050"
    )
    _full_gaussian(res, [(0, 0, 0, 1.5), (100, 5, 5, 0.9), (200, 0, 0, 0.3)])
    page = build_page(res, ref)
    assert "recipe with the reference's N on the same images does: gaussian at sigma 0.5 (section" in page
    trimmed = _row(page, "What the trims cost", "| trimmed (2 of 8 (recipe 90) epochs, N 10,000) |")
    full = _row(page, "What the trims cost", "| full (90 of 90 (recipe 90) epochs, N 100,000) |")
    rebounded = _row(page, "What the trims cost", "| full, re-bounded to N 10,000 |")
    assert trimmed[1:] == ["0.533", "66.7", "33.3", "33.3"] and full[1:] == ["0.900", "100.0", "66.7", "33.3"]
    # the same votes bounded with 10,000 draws: every radius shrinks, 0.3 may fall to an abstention
    assert 0 < float(rebounded[1]) < 0.9
    assert _row(page, "What the trims cost", "| reference |")[1] == f"{(2.7 / 3 + 1.8 / 3) / 2:.3f}"


def test_a_fine_tune_is_set_beside_its_gaussian_start(study, tmp_path):
    """A full Gaussian run (N 100,000) and a SmoothMix run fine-tuned 3 epochs from its checkpoint
    (N 10,000) on the same images: the page reads the fine-tune from its config, sets it beside the
    Gaussian start re-bounded to N 10,000 and gives both gains, ours and the reference's."""
    res, ref = study
    ref["settings"]["smoothmix/sigma_0.50"] = {**ref["settings"]["macer/sigma_0.50"], "method": "smoothmix"}
    _full_gaussian(res, [(0, 0, 0, 1.0), (100, 5, 5, 0.6), (200, 0, 0, 0.53)])
    # the checkpoint the fine-tune starts from holds the weights the Gaussian table certified
    init = save_checkpoint(
        tmp_path / "start.safetensors", create_model("lenet", in_channels=1, input_size=28)
    )
    side = res / "gaussian_sigma0.5.tsv.json"
    digest = weights_digest(load_checkpoint(init)[0])
    side.write_text(json.dumps({**json.loads(side.read_text()), "weights_sha256": digest}))
    model = res / "models" / "mnist_lenet_smoothmix_sigma050"
    model.mkdir()
    (model / "config.yaml").write_text(
        f"objective: smoothmix\nsigma: 0.5\nepochs: 3\nlr: 0.001\nmilestones: [3]\ninit: {init}\nseed: 0\n"
    )
    (model / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "epoch_loop_seconds": 90.0}) + "\n" for e in (1, 2, 3))
    )
    _tsv(res / "smoothmix_sigma0.5.tsv", [(0, 0, 0, 0.46), (100, 5, 5, 0.46), (200, 0, 0, 0.46)])
    page = build_page(res, ref)
    # the ACR targets: a gap of 0.04 meets SmoothMix's 0.05 and misses Gaussian's 0.03
    s = _row(page, "Summary", "| smoothmix | 0.5 |")
    assert s[3:7] == ["0.460", "0.500", "−0.040", "met"]
    g = _row(page, "Summary", "| gaussian | 0.5 |")
    gap = 2.13 / 3 - ((min(1.9, certify_cap(0.5, 100_000, 0.001)) + 0.8) / 3 + 0.6) / 2
    assert 0.03 < -gap < 0.05 and not within(gap, ACR_TOLERANCE["gaussian"])
    assert g[5:7] == [f"−{-gap:.3f}", "**not met**"]
    # reading: fine-tuned from its init, no full-recipe time; the Gaussian run is the full recipe
    [bullet] = [line for line in page.splitlines() if line.startswith("- smoothmix, sigma 0.5:")]
    assert f"fine-tuned for 3 epochs (lr 0.001, lr milestones 3) from the checkpoint `{init}`" in bullet
    assert "would take" not in bullet and "full recipe" not in bullet
    assert "The trimmed rows trained from scratch do not separate the two" in page
    assert "does: gaussian at sigma 0.5 (section" in page
    assert "The fine-tuned rows (smoothmix at sigma 0.5) start from the trained checkpoint" in page
    assert _row(page, "What the smoothinf runs differ in", "| smoothmix | 0.5 |")[3] == "3 (fine-tune)"
    assert f"--init {init}" in page
    # the section, after the reading and before the differences; the start's weights are checked
    section = "Fine-tunes from the Gaussian model"
    assert (
        page.index("## Reading the gaps") < page.index(f"## {section}") < page.index("## What the smoothinf")
    )
    assert (
        f"from `{init}`. It holds the weights the Gaussian table certified (tensor sha256 {digest[:12]})."
        in page
    )
    rb = rebound([1.0, 0.6, 0.53], 0.5, 100_000, 10_000, 0.001)
    start = _row(page, section, "| Gaussian start (90 epochs, N 100,000, re-bounded to N 10,000) |")
    tuned = _row(page, section, "| smoothmix fine-tune (3 epochs from the start, N 10,000) |")
    gain = _row(page, section, "| gain (fine-tune − start) |")
    assert start[1] == f"{rb.sum() / 3:.3f}" and tuned[1:] == ["0.460", "100.0", "0.0", "0.0"]
    assert gain[1] == f"−{rb.sum() / 3 - 0.46:.3f}"
    assert (rb > 0).all() and rb[0] < 1  # no abstention, and no radius of 1 left at N 10,000
    start_ca = [float(np.mean(rb >= r)) for r in (0, 0.5, 1)]
    assert start[2:] == [f"{100 * x:.1f}" for x in start_ca]
    assert gain[2:] == [_points(100 * (f - x)) for f, x in zip((1, 0, 0), start_ca, strict=True)]
    # the reference on the same images, re-bounded to N 10,000: run A (1.9, 0.6, 0.2 correct),
    # run B (1.0 correct, 0.7 wrong, 0.8 correct); its SmoothMix 0.5 on every image
    a = rebound([1.9, 0.6, 0.2], 0.5, 100_000, 10_000, 0.001).sum() / 3
    b = rebound([1.0, 0.8], 0.5, 100_000, 10_000, 0.001).sum() / 3
    mix = float(rebound([0.5], 0.5, 100_000, 10_000, 0.001)[0])
    assert _row(page, section, "| reference gaussian (")[1] == f"{(a + b) / 2:.3f}"
    assert _row(page, section, "| reference smoothmix (")[1] == f"{mix:.3f}"
    ref_gain = mix - (a + b) / 2
    assert _row(page, section, "| reference gain (smoothmix − gaussian) |")[1] == (
        f"{'−' if ref_gain < 0 else '+'}{abs(ref_gain):.3f}"
    )


def test_committed_page_matches_the_committed_files():
    results = ROOT / "results" / "certified_mnist"
    if not list(results.glob("*.tsv")):
        pytest.skip("no certify table in results/certified_mnist yet: docs/certified-mnist.md not generated")
    ref = json.loads((ROOT / "studies" / "certified_mnist" / "reference_rows.json").read_text())
    assert (ROOT / "docs" / "certified-mnist.md").read_text() == build_page(results, ref)
