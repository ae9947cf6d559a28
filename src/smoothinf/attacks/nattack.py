"""NAttack (Li et al. 2019): black-box attack learning a Gaussian search distribution with NES.

Perturbations live in tanh space: a sample is x' = Proj_eps(0.5 * tanh(arctanh(2x - 1) + mu + s z) + 0.5),
z ~ N(0, I). The mean mu is updated by natural-evolution-strategies gradient estimates from the
model's class probabilities only (no gradients), with the reward -0.5 * max(log p_y - log max_{j!=y} p_j, 0)
z-scored over the population. Each iteration is one batched forward of N_active * population rows
(plus N_active rows to test the mean); an example stops as soon as any query fooled the model. On a
randomised model (``is_randomised``) that single noisy verdict is not enough: the example stops only
once a fresh forward of the fooling point (one more query, spent only when the budget leaves room
for another iteration) also misclassifies it.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothinf.attacks.base import Attack, check_positive_int, clip_to_threat
from smoothinf.attacks.best import confirm
from smoothinf.attacks.judge import is_randomised
from smoothinf.errors import ConfigError


class NAttack(Attack):
    """Score-based NES attack (Li et al. 2019, "NATTACK").

    Args:
        model: classifier returning logits/scores (N, K); only its outputs are used.
        eps: threat-model radius (pixel units); norm: "linf" | "l2".
        population: samples per iteration and example (paper: 300).
        sigma: std of the search distribution in tanh space (paper: 0.1).
        lr: NES learning rate (paper: 0.02).
        max_queries: query budget per example (population + 1 per iteration, plus 1 per fresh
            confirmation of a fooling point on a randomised model).
        batch_size: bound on the rows of one forward.
    """

    name = "nattack"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        population: int = 100,
        sigma: float = 0.1,
        lr: float = 0.02,
        max_queries: int = 10000,
        norm: str = "linf",
        *,
        batch_size: int | None = None,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eps, norm, targeted=False, eval_mode=eval_mode, batch_size=batch_size)
        self.population = check_positive_int(population, "population")
        if self.population < 2:
            raise ConfigError("population must be >= 2 (NES standardises rewards over it)")
        self.max_queries = check_positive_int(max_queries, "max_queries")
        if self.max_queries < self.population + 1:
            raise ConfigError(f"max_queries must be >= population + 1 = {self.population + 1}")
        if not sigma > 0 or not lr > 0:
            raise ConfigError(f"sigma and lr must be > 0, got sigma={sigma}, lr={lr}")
        self.sigma = float(sigma)
        self.lr = float(lr)
        self.queries: torch.Tensor | None = None  # per-example queries used by the last call

    def __repr__(self) -> str:
        return (
            f"NAttack(eps={self.eps}, norm={self.norm!r}, population={self.population}, "
            f"sigma={self.sigma}, lr={self.lr}, max_queries={self.max_queries})"
        )

    @torch.no_grad()
    def _probs(self, rows: torch.Tensor) -> torch.Tensor:
        """Softmax of the model's scores, chunked by ``batch_size`` rows."""
        return torch.cat([self.model(c).softmax(-1) for c in rows.split(self.rows_per_forward(rows))])

    @torch.no_grad()
    def _perturb(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, shape, pop = x.shape[0], x.shape[1:], self.population
        gdev = gen.device
        w = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))  # tanh-space image
        mu = (torch.randn(x.shape, generator=gen, device=gdev) * 1e-3).to(x.device)
        x_adv = x.clone()
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        active = torch.arange(n, device=x.device)
        randomised = is_randomised(self.model)
        ever_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)  # x_adv holds a fooling point

        def to_image(idx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return clip_to_threat(0.5 * torch.tanh(t) + 0.5, x[idx].expand_as(t), self.eps, self.norm)

        while active.numel():  # the first iteration fits: max_queries >= pop + 1
            a = active.numel()
            # Test the current mean (one query per example); keep it where it fools the model.
            cand = to_image(active, w[active] + mu[active])
            queries[active] += 1
            fooled = self._probs(cand).argmax(1) != y[active]
            x_adv[active[fooled]] = cand[fooled]
            # Population: (pop, a, C, H, W), population-major rows.
            z = torch.randn((pop, a, *shape), generator=gen, device=gdev).to(x.device)
            t = w[active][None] + mu[active][None] + self.sigma * z
            samples = to_image(active.repeat(pop), t.reshape(pop * a, *shape))
            p = self._probs(samples).view(pop, a, -1)
            queries[active] += pop
            ya = y[active]
            p_y = p.gather(2, ya.view(1, a, 1).expand(pop, a, 1))[..., 0]
            p_other = p.scatter(2, ya.view(1, a, 1).expand(pop, a, 1), -1.0).max(2).values
            margin = (p_y + 1e-30).log() - (p_other.clamp_min(0) + 1e-30).log()  # (pop, a)
            # Any sample that already fools the model is an adversarial example.
            wins = margin < 0
            won = wins.any(0) & ~fooled
            if won.any():
                first = wins.float().argmax(0)
                best = samples.view(pop, a, *shape)[first, torch.arange(a, device=x.device)]
                x_adv[active[won]] = best[won]
            reward = -0.5 * margin.clamp(0, 1000)
            adv_z = (reward - reward.mean(0)) / (reward.std(0) + 1e-7)
            mu[active] += self.lr / (pop * self.sigma) * torch.einsum("pa,pa...->a...", adv_z, z)
            done = fooled | won
            ever_fooled[active[done]] = True
            if randomised:  # confirm with a fresh forward, when another iteration could follow it
                ask = done & (queries[active] + pop + 2 <= self.max_queries)
                queries[active[ask]] += 1
                fresh = confirm(x_adv[active], y[active], ask, lambda xc, yc: self._probs(xc))
                done = (done & ~ask) | fresh
            still = active[~done]
            spent = queries[still] + pop + 1 > self.max_queries
            # Failed examples keep their last fooling point, else the last mean's image.
            last = still[spent & ~ever_fooled[still]]
            x_adv[last] = to_image(last, w[last] + mu[last])
            active = still[~spent]
        self.queries = queries
        return x_adv
