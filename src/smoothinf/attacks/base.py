"""Shared pieces of every attack: threat model, projection, clipping, random start, losses, restarts.

Threat model: ``||x' - x||_p <= eps`` (p = inf or 2, eps in pixel units) and ``x' in [0, 1]``.
Attacks are callables ``attack(x, y, generator=None) -> x_adv`` that never modify ``x`` in place,
run the model in eval mode by default and restore every module's ``training`` flag and the noise
layers' switch afterwards. Gradients are always fresh (``torch.autograd.grad``), never accumulated
in ``.grad`` (the reference code's accidental momentum).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.errors import ConfigError, SmoothinfError
from smoothinf.noise.distributions import NoiseDistribution
from smoothinf.noise.draws import chunk_rows, draw_major, noise_layers, per_draw_noise, rows_for_draws
from smoothinf.utils import check_images, check_labels, model_device

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw", "dlr")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Attributes a noise layer may use for its on/off switch; snapshotted and restored by every attack.
_SWITCH_ATTRS = ("enabled", "noise_enabled")


# ----------------------------------------------------------------------------------------- losses
def _other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j, shape (N,)."""
    masked = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return masked.max(dim=1).values


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (N,)."""
    return F.cross_entropy(logits, y, reduction="none")


def cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin max_{j != y} z_j - z_y (N,): positive once misclassified."""
    return _other_max(logits, y) - logits.gather(1, y[:, None])[:, 0]


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Croce & Hein's DLR loss -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12) (N,); needs K >= 3."""
    if logits.shape[1] < 3:
        raise ConfigError("the dlr loss needs at least 3 classes; use ce or cw")
    top = logits.sort(dim=1, descending=True).values
    return cw_loss(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


_LOSS_FNS: dict[str, LossFn] = {"ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss}


def resolve_loss(loss: str | LossFn) -> LossFn:
    """A loss name (ce|cw|dlr) or a callable ``(logits (N,K), y (N,)) -> (N,)`` to maximise."""
    if callable(loss):
        return loss
    if loss not in _LOSS_FNS:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)} or pass a callable")
    return _LOSS_FNS[loss]


# ---------------------------------------------------------------------------------- threat model
def _flat_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    """Per-example norm of a (N, ...) tensor, shape (N, 1, 1, 1) broadcastable to it."""
    n = t.flatten(1).norm(p=p, dim=1)
    return n.view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str, inplace: bool = False) -> torch.Tensor:
    """Project perturbations (N, ...) onto the eps-ball of ``norm`` (linf: clamp, l2: rescale);
    ``inplace=True`` overwrites ``delta`` with the result (the same numbers)."""
    if norm == "linf":
        return delta.clamp_(-eps, eps) if inplace else delta.clamp(-eps, eps)
    scale = (eps / _flat_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)
    return delta.mul_(scale) if inplace else delta * scale


def clip_to_threat(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, inplace: bool = False
) -> torch.Tensor:
    """Project ``x_adv`` into the eps-ball around ``x`` and then onto [0, 1].

    Clamping to [0, 1] after projecting only moves each pixel towards ``x`` (which lies in [0, 1]),
    so the result stays inside the ball. ``inplace=True`` overwrites ``x_adv`` (a tensor of the
    caller's that needs no gradient) with the result: the same numbers without temporaries.
    """
    if inplace:
        return project(x_adv.sub_(x), eps, norm, inplace=True).add_(x).clamp_(0.0, 1.0)
    return (x + project(x_adv - x, eps, norm)).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A point drawn uniformly from the eps-ball around ``x`` (then clipped to [0, 1])."""
    gdev = generator.device if generator is not None else x.device
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=generator, device=gdev) * 2 - 1) * eps
    else:
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=generator, device=gdev)
        direction = direction / _flat_norm(direction, 2).clamp_min(1e-12)
        radius = torch.rand((x.shape[0],), generator=generator, device=gdev) ** (1.0 / d) * eps
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
    return clip_to_threat(x + delta.to(device=x.device, dtype=x.dtype), x, eps, norm)


def steepest_step(grad: torch.Tensor, alpha: float, norm: str, inplace: bool = False) -> torch.Tensor:
    """The steepest-ascent step of length alpha: alpha * sign(g) (linf) or alpha * g/||g||_2 (l2);
    ``inplace=True`` overwrites ``grad`` with it (the same numbers)."""
    if norm == "linf":
        return grad.sign_().mul_(alpha) if inplace else alpha * grad.sign()
    length = _flat_norm(grad, 2).clamp_min(1e-12)
    return grad.mul_(alpha).div_(length) if inplace else alpha * grad / length


# ------------------------------------------------------------------------------- model handling
def unwrap_smoothed(model: nn.Module) -> tuple[nn.Module, NoiseDistribution | None, int | None]:
    """``(base model, noise, m)`` of a SmoothedClassifier (duck-typed); ``(model, None, None)`` otherwise."""
    base = getattr(model, "model", None)
    noise = getattr(model, "noise", None)
    if isinstance(base, nn.Module) and isinstance(noise, NoiseDistribution):
        return base, noise, int(getattr(model, "m", 1))
    return model, None, None


def num_classes_of(model: nn.Module, x: torch.Tensor) -> int:
    """Number of classes, from one forward of a single example."""
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


@contextmanager
def attack_mode(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Put ``model`` in eval mode (if asked) and restore every module's ``training`` flag,
    the noise layers' on/off switch and their per-draw state afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    switches = [(m, a, getattr(m, a)) for m in noise_layers(model) for a in _SWITCH_ATTRS if hasattr(m, a)]
    try:
        if eval_mode:
            model.eval()
        yield
    finally:
        for m, t in modes:
            m.training = t
        for m, a, v in switches:
            setattr(m, a, v)


def ensure_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """``generator`` itself, or a fresh one on ``device`` seeded from torch's global RNG (so a global
    seed still reproduces the run) when None."""
    if generator is not None:
        return generator
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator(device=device).manual_seed(seed)


def check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"eps must be a finite number >= 0 (pixel units), got {eps!r}")
    return float(eps)


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return norm


def is_positive_number(value: Any) -> bool:
    """True for a finite int or float > 0 (a bool is not a number here)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < math.inf


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


# ---------------------------------------------------------------------------- expected losses
def _log_sum_probs(logits: torch.Tensor) -> torch.Tensor:
    """log sum_j softmax(z_j) over the draws of logits (d, N, K), in log space: (N, K)."""
    return torch.logsumexp(logits.log_softmax(-1), dim=0)


def _log_odds_against(log_p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log((1 - p_y) / p_y) from log-probabilities (N, K): logsumexp_{k != y} log p_k - log p_y, (N,).

    Never saturates: about log(1 - p_y) for a confident p_y, -log p_y for a small one.
    """
    others = log_p.masked_fill(F.one_hot(y, log_p.shape[1]).bool(), float("-inf"))
    return torch.logsumexp(others, dim=1) - log_p.gather(1, y[:, None])[:, 0]


def _softmax_objective(
    log_pbar: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss (N,), surrogate (N,))`` at log mean probabilities (N, K); the surrogate has its gradient.

    CE (``ce_loss``) is taken in log-odds form o = ``_log_odds_against``: CE = softplus(o) and
    grad CE = sigmoid(o) grad o, so neither its value nor its gradient passes through 1 - p_y (which
    float32 rounds to 0 once the other classes hold under 6e-8 of the mass) or through p_k = exp(log p_k)
    (0 below e^-103). The factor sigmoid(o) = 1 - p_y is floored at sqrt(smallest normal number)
    (1e-19 in float32): a saturated CE still gives its exact direction, at that small scale, where
    the exact gradient would be (nearly) zero and sign(0) would not move the attack. Any other loss is
    its own surrogate (CW and DLR are differences of log-probabilities: they do not saturate).
    """
    if loss_fn is not ce_loss:
        loss = loss_fn(log_pbar, y)
        return loss, loss
    odds = _log_odds_against(log_pbar, y)
    scale = torch.sigmoid(odds.detach()).clamp_min(torch.finfo(odds.dtype).tiny ** 0.5)
    return F.softplus(odds), scale * odds


def expected_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    noise: NoiseDistribution | None,
    m: int,
    reduce: str,
    generator: torch.Generator,
    batch_size: int,
    need_grad: bool = True,
    per_draw: bool = True,
    need_probs: bool = True,
    temperature: float = 1.0,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Monte Carlo estimate of an expected loss over m draws, its input gradient and mean probabilities.

    reduce="loss": L = mean_j loss(f(x + n_j), y)  (EPGD / EOT: expectation of the loss);
    reduce="softmax": L = loss(log mean_j softmax f(x + n_j), y)  (SmoothAdv: loss of the expectation).
    The m draws run as one batch of example-major rows (``smoothinf.noise.draws``), inside
    ``per_draw_noise(model, draws, generator)`` so weight-noise layers give each draw its own noise.
    When N*m exceeds ``batch_size`` the draws are chunked (at least one draw of N rows per chunk) and
    gradients accumulate across chunks; reduce="softmax" then takes a no-grad pass for the mean
    probabilities and replays the same draws (same generator state) for the vector-Jacobian product.
    A chunk holds at least one draw of all N rows: split larger batches of examples before calling.
    reduce="softmax" works in log space on every path: log mean_j softmax = logsumexp over draws (and
    chunks) of log_softmax, minus log m, and CE goes through ``_softmax_objective`` (exact value;
    gradient exact unless the loss is below 1e-19, then its direction at that scale).
    ``per_draw=False`` skips the per-draw context (a model without noise layers; saves a module walk);
    ``need_probs=False`` skips the mean probabilities of reduce="loss" (returned as None).
    ``temperature`` T divides every draw's logits before the loss: with reduce="softmax" and T < 1,
    mean_j softmax(z_j / T) tends to the share of draws voting for each class, the hard vote's
    tally (a surrogate for prediction voting; T = 1 is SmoothAdv's soft vote).

    Returns ``(grad (N,C,H,W) or None, loss (N,), mean probabilities (N,K))``; x: (N,C,H,W) in [0,1].
    """
    n = x.shape[0]
    per = max(1, min(m, batch_size // max(n, 1)))
    chunks = [(s, min(per, m - s)) for s in range(0, m, per)]

    def outputs(xa: torch.Tensor, d: int) -> torch.Tensor:
        """Logits (N * d, K) of d noisy draws of every example, example-major rows."""
        eta = None
        if noise is not None and noise.sigma > 0:
            eta = noise.sample((d,) + tuple(xa.shape), generator, generator.device, xa.dtype).to(xa.device)
        rows = rows_for_draws(xa, d, eta)
        if not per_draw:
            out = model(rows)
        else:
            with per_draw_noise(model, d, generator):
                out = model(rows)
        return out if temperature == 1.0 else out / temperature

    def forward(xa: torch.Tensor, d: int) -> torch.Tensor:
        """Logits (d, N, K) of d noisy draws of every example."""
        return draw_major(outputs(xa, d), d)

    if reduce == "loss":
        grad = loss_sum = prob_sum = None
        for _, d in chunks:
            xa = x.detach().requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                if d == 1:  # one draw: logits (N, K), no sums over draws (the same numbers)
                    logits = outputs(xa, d)
                    losses = loss_fn(logits, y)
                else:
                    logits = forward(xa, d)
                    losses = loss_fn(logits.reshape(d * n, -1), y.repeat(d)).view(d, n).sum(0)
            if need_grad:
                g = torch.autograd.grad(losses.sum() / m if m > 1 else losses.sum(), xa)[0]
                grad = g if grad is None else grad.add_(g)
            loss_sum = losses.detach() if loss_sum is None else loss_sum + losses.detach()
            if need_probs:
                probs = logits.detach().softmax(-1)
                probs = probs if d == 1 else probs.sum(0)
                prob_sum = probs if prob_sum is None else prob_sum + probs
        if m == 1:
            return grad, loss_sum, prob_sum
        return grad, loss_sum / m, (prob_sum / m if need_probs else None)

    # reduce == "softmax": log_pbar = log sum_j softmax(z_j) - log m, (N, K)
    if len(chunks) == 1:
        xa = x.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            log_pbar = _log_sum_probs(forward(xa, m)) - math.log(m)
            losses, surrogate = _softmax_objective(log_pbar, y, loss_fn)
        grad = torch.autograd.grad(surrogate.sum(), xa)[0] if need_grad else None
        return grad, losses.detach(), log_pbar.detach().exp()
    state = generator.get_state()
    with torch.no_grad():
        log_total = None  # log sum over all draws so far, combined chunk by chunk
        for _, d in chunks:
            part = _log_sum_probs(forward(x, d))
            log_total = part if log_total is None else torch.logaddexp(log_total, part)
    log_pbar = (log_total - math.log(m)).requires_grad_(need_grad)
    with torch.set_grad_enabled(need_grad):
        losses, surrogate = _softmax_objective(log_pbar, y, loss_fn)
    if not need_grad:
        return None, losses.detach(), log_pbar.detach().exp()
    g_log = torch.autograd.grad(surrogate.sum(), log_pbar)[0]
    generator.set_state(state)
    grad = torch.zeros_like(x)
    for _, d in chunks:
        xa = x.detach().requires_grad_(True)
        with torch.enable_grad():
            part = _log_sum_probs(forward(xa, d))
            # d log_pbar / d part = exp(part - log_total): this chunk's share of the summed probabilities
            share = (part.detach() - log_total).exp()
            grad += torch.autograd.grad((g_log * share * part).sum(), xa)[0]
    return grad, losses.detach(), log_pbar.detach().exp()


# ------------------------------------------------------------------------------------ base class
class Attack:
    """Base of every attack: validation, mode handling and the ``attack(x, y, generator)`` protocol.

    Subclasses implement ``_perturb(x, y, target, generator) -> x_adv`` on validated inputs.
    ``targeted=True`` reads the target classes from ``y`` (the attack then minimises the loss of y).
    """

    name = "attack"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        *,
        targeted: bool = False,
        eval_mode: bool = True,
        batch_size: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module) and not callable(model):
            raise ConfigError("model must be a torch.nn.Module (or a callable returning logits)")
        self.model = model
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.targeted = bool(targeted)
        self.eval_mode = bool(eval_mode)
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self._num_classes: int | None = None

    def rows_per_forward(self, x: torch.Tensor) -> int:
        """Rows of one forward for inputs like ``x``: ``batch_size`` when given, else a bound on the
        input values of a chunk (``smoothinf.noise.draws.chunk_rows``: 2^17 on CPU, 2^19 for
        weight-noise models, 2^25 on GPU, e.g. 10900 CIFAR rows)."""
        model = self.model if isinstance(self.model, nn.Module) else None
        return chunk_rows(x, model, self.batch_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, norm={self.norm!r})"

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Adversarial examples (N,C,H,W) in [0,1] within the eps-ball around ``x`` (never modified)."""
        if x.shape[0] == 0:
            self._checked(x, y)
            return x.clone()
        x_adv = self._run_checked(self._perturb, x, y, generator)
        # Exact threat-model guarantee whatever the subclass did (also kills tiny float drift).
        return clip_to_threat(x_adv.detach(), x.detach(), self.eps, self.norm)

    def _checked(self, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
        """Validate (x, y) against the model's device; returns the module whose modes ``attack_mode`` sets."""
        module = self.model if isinstance(self.model, nn.Module) else nn.Module()
        check_images(x, "x", model_device(module))
        check_labels(y, x.shape[0])
        return module

    def _run_checked(self, fn: Callable, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None):
        """``fn(x, y, generator)`` on validated, detached inputs (N >= 1) in the attack's mode."""
        module = self._checked(x, y)
        with attack_mode(module, self.eval_mode):
            if self._num_classes is None:  # one forward, on the first call only
                self._num_classes = num_classes_of(self.model, x)
            check_labels(y, x.shape[0], self._num_classes)
            gen = ensure_generator(generator, x.device)
            return fn(x.detach(), y.detach(), gen)

    def attack(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Alias of ``__call__``."""
        return self(x, y, generator)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


def require_module(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise SmoothinfError("this attack needs a torch.nn.Module model")
    return model
