"""The Square attack (L_inf): its schedule, its optimum on a linear model, its bookkeeping."""

from __future__ import annotations

import pytest
import torch

from smoothinf.attacks import Square, build_attack
from smoothinf.attacks.square import window_fraction
from smoothinf.errors import ConfigError
from support import Linear2

EPS = 0.1


def _linear_case(n: int = 24):
    """A binary linear model on 4x4 images of 0.5 (no clipping within EPS) with weights of +-1:
    the L_inf attack lowers the margin w.x + b by at most EPS * ||w||_1 = 1.6, and exactly that at
    x - EPS * sign(w). Example i is 0.5 + c_i * w with margin 16 c_i = 0.1 i + 0.05: 0.05 .. 2.35,
    never a multiple of a flip's 0.2
    (pixels within [0.35, 0.65], so the eps-ball stays inside [0, 1])."""
    w = torch.tensor([1.0, -1.0] * 8).view(1, 4, 4)
    w[0, 1] *= -1  # not a pattern of whole columns or rows; the weights still sum to 0
    model = Linear2(w, 0.0).eval()
    margins = 0.1 * torch.arange(n) + 0.05
    x = 0.5 + (margins / 16).view(n, 1, 1, 1) * w
    with torch.no_grad():
        z = model(x)[:, 1]
    return model, x, torch.ones(n, dtype=torch.long), z, w


def test_window_fraction_halves_at_the_papers_iterations_rescaled_to_the_budget():
    assert window_fraction(0.8, 10, 10_000) == 0.8
    assert window_fraction(0.8, 11, 10_000) == 0.4
    assert window_fraction(0.8, 8001, 10_000) == pytest.approx(0.8 / 512)
    assert window_fraction(0.8, 5, 5000) == 0.8 and window_fraction(0.8, 6, 5000) == 0.4
    assert window_fraction(0.8, 4999, 5000) == pytest.approx(0.8 / 512)


def test_square_reaches_the_linear_optimum_and_fools_exactly_the_reachable_examples():
    """On a linear model the best L_inf point lowers the margin by EPS * ||w||_1 = 1.6: Square's
    single-pixel windows (late in the schedule) hill-climb to it, so every example with margin below
    1.6 is fooled and every other one ends at margin - 1.6."""
    model, x, y, z, w = _linear_case()
    drop = EPS * float(w.abs().sum())
    attack = Square(model, EPS, queries=2000)
    x_adv = attack(x, y, torch.Generator().manual_seed(0))
    assert float((x_adv - x).abs().max()) <= EPS + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        after = model(x_adv)[:, 1]
    reachable = z < drop - 1e-4
    assert int(reachable.sum()) == 16
    assert bool((after[reachable] < 0).all())
    torch.testing.assert_close(after[~reachable], z[~reachable] - drop, atol=1e-5, rtol=0)
    # fooled examples stop querying; the others spend the whole budget
    assert int(attack.queries_used[~reachable].min()) == 2001  # the clean forward and 2000 queries
    assert int(attack.queries_used[reachable].max()) < 2001


def test_square_is_reproducible_and_skips_examples_already_misclassified():
    model, x, y, _, _ = _linear_case()
    x, y = x[16:], y[16:]  # margins 1.65 .. 2.35: class 1 anywhere in the eps-ball
    wrong = torch.zeros_like(y)  # label 0 is wrong at x itself: one query, x returned
    attack = Square(model, EPS, queries=50)
    a = attack(x, y, torch.Generator().manual_seed(3))
    b = attack(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and attack.queries_used.tolist() == [51] * 8  # clean + 50 search queries
    assert torch.equal(attack(x, wrong, torch.Generator().manual_seed(3)), x)
    assert attack.queries_used.tolist() == [1] * 8


def test_square_by_name_budget_and_bad_options():
    model, *_ = _linear_case(2)
    attack = build_attack("square", model, EPS, queries=30)
    assert isinstance(attack, Square) and attack.budget() == {"queries": 30, "p_init": 0.8}
    with pytest.raises(ConfigError, match="L_inf only"):
        Square(model, EPS, norm="l2")
    with pytest.raises(ConfigError, match="p_init"):
        Square(model, EPS, p_init=1.5)
    with pytest.raises(ConfigError, match="queries"):
        Square(model, EPS, queries=0)
