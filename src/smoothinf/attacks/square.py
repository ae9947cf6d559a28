"""Square attack (Andriushchenko et al. 2020), L_inf: a score-based random search, no gradients.

It starts from vertical stripes (every column and channel moved by +-eps; an example the model
already gets wrong is returned as it is) and then, one query per iteration, proposes a new value
for a random square window of each example (+-eps per channel, whole window), keeping the
proposal when it lowers the margin loss ``z_y - max_{k != y} z_k`` (targeted:
``max_{k != t} z_k - z_t``). The window's side shrinks with the fraction ``p`` of pixels
it covers, halved at the paper's iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a
10,000-query run (rescaled to ``queries``). An example leaves the batch once it is fooled (margin
< 0), so a run costs about ``queries`` forwards of the examples that stay robust.

It needs only the model's scores, so it does not follow gradients: a model that masks gradients
(robust to PGD / APGD but not to Square) shows up as Square's finds beyond the white-box attacks'.
The search accepts on one forward, so it is meant for deterministic models; on a randomised model it
hill-climbs noisy margins (the protocol's black-box check runs it on a smoothed model's scores).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from smoothinf.attacks.base import Attack, check_positive_int
from smoothinf.errors import ConfigError

# The paper's schedule for 10,000 queries: p halves after each of these iterations.
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SCHEDULE_QUERIES = 10_000
DEFAULT_QUERIES = 5000
"""AutoAttack ``standard``'s Square budget."""
DEFAULT_P_INIT = 0.8
"""The paper's (and AutoAttack's) initial window fraction for L_inf."""


def window_fraction(p_init: float, iteration: int, queries: int) -> float:
    """The fraction p of the image a window covers at ``iteration`` of a ``queries``-query run."""
    at = int(iteration / queries * SCHEDULE_QUERIES)
    return p_init / 2 ** sum(at > h for h in P_HALVINGS)


class Square(Attack):
    """Square attack, L_inf (Andriushchenko et al. 2020); see the module docstring.

    Args:
        model: classifier returning scores (N, K); only its outputs are used.
        eps: L_inf radius, pixel units.
        queries: search queries per example at most, the stripes included (AutoAttack standard:
            5000); one more forward checks the clean point.
        p_init: initial fraction of the pixels a window covers (paper: 0.8 for L_inf).
        targeted: minimise the margin towards ``y`` read as target classes.
        batch_size: bound on the rows of one forward.
    After a call, ``queries_used`` (N,) holds each example's forwards (the clean one included).
    """

    name = "square"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        queries: int = DEFAULT_QUERIES,
        p_init: float = DEFAULT_P_INIT,
        norm: str = "linf",
        *,
        targeted: bool = False,
        batch_size: int | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eps, norm, targeted=targeted, eval_mode=eval_mode, batch_size=batch_size)
        if self.norm != "linf":
            raise ConfigError("the Square attack here is L_inf only (norm='linf')")
        self.queries = check_positive_int(queries, "queries")
        if not 0 < p_init <= 1:
            raise ConfigError(f"p_init must lie in (0, 1], got {p_init}")
        self.p_init = float(p_init)
        self.queries_used: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"Square(eps={self.eps}, queries={self.queries}, p_init={self.p_init})"

    def budget(self) -> dict[str, float]:
        """Forwards per example, at most."""
        return {"queries": self.queries, "p_init": self.p_init}

    @torch.no_grad()
    def _margin(self, rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) margin loss of ``rows`` (N, C, H, W): negative once the example is fooled."""
        logits = torch.cat([self.model(c) for c in rows.split(self.rows_per_forward(rows))]).float()
        own = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        return other - own if self.targeted else own - other

    def _signs(self, shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
        """Uniform +-1 of ``shape`` from ``gen``, on ``device``."""
        bits = torch.randint(0, 2, shape, generator=gen, device=gen.device)
        return (bits * 2 - 1).to(device=device, dtype=torch.float32)

    @torch.no_grad()
    def _perturb(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        eps = self.eps
        margin = self._margin(x, y)  # an example the model already gets wrong keeps x
        used = torch.ones(n, dtype=torch.long, device=x.device)
        best = x.clone()
        live = (margin > 0).nonzero().squeeze(1)
        if live.numel() and self.queries > 1:
            stripes = eps * self._signs((live.numel(), c, 1, w), gen, x.device).to(x.dtype)
            best[live] = (x[live] + stripes).clamp(0, 1)
            margin[live] = self._margin(best[live], y[live])
            used[live] += 1
        rows_h = torch.arange(h, device=x.device)
        rows_w = torch.arange(w, device=x.device)
        for it in range(1, self.queries):
            live = (margin > 0).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            k = live.numel()
            p = window_fraction(self.p_init, it, self.queries)
            side = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1 if h > 1 else 1, w)
            top = torch.randint(0, h - side + 1, (k,), generator=gen, device=gen.device).to(x.device)
            left = torch.randint(0, w - side + 1, (k,), generator=gen, device=gen.device).to(x.device)
            in_h = (rows_h >= top[:, None]) & (rows_h < top[:, None] + side)
            in_w = (rows_w >= left[:, None]) & (rows_w < left[:, None] + side)
            window = (in_h[:, :, None] & in_w[:, None, :])[:, None]  # (k, 1, H, W)
            xl, cur = x[live], best[live]
            value = eps * self._signs((k, c, 1, 1), gen, x.device).to(x.dtype)
            proposal = torch.where(window, (xl + value).clamp(0, 1), cur)
            # a proposal equal to the current point wastes a query: take the opposite signs there
            same = ((proposal - cur).abs().flatten(1).amax(1) < 1e-7)[:, None, None, None]
            proposal = torch.where(window & same, (xl - value).clamp(0, 1), proposal)
            new = self._margin(proposal, y[live])
            better = new < margin[live]
            best[live[better]] = proposal[better]
            margin[live] = torch.where(better, new, margin[live])
            used[live] += 1
        self.queries_used = used
        return best
