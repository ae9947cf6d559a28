"""Noise-injection layers: PNI and CNI weight noise, activation noise, input noise.

* PNI (He et al. 2019): W~ = W + alpha * eta, eta ~ N(0, std(W)^2) (std over the whole tensor,
  detached), alpha learned (granularity layer / channel / element, init 0.25). Activation noise
  (PNI-A) adds alpha_a * std(a) * N(0, 1) to the layer's output.
* CNI (Zheltonozhskii et al. 2020): eta = sqrt(|std(W) * d|) * e + F u, e ~ N(0, I_D),
  u ~ N(0, I_r), learned d (init 0.0625) and F (D x r, init 0.01): Cov = diag(|std(W) d|) + F F^T.
* Input noise (CNI-I): x + sigma * N(0, I) in pixel units, before normalisation; sigma fixed or learned.

Noise is on while ``noise_enabled`` is True, whatever ``model.training`` says. Every layer follows
the per-draw contract of ``smoothinf.noise.draws``: with ``num_draws = d`` the batch rows are
example-major (row i*d + j is draw j of example i) and each draw gets its own weight noise (grouped
convolution on a free view of the rows / batched matmul, no loop over draws).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smoothinf.errors import SmoothinfError

GRANULARITIES = ("layer", "channel", "element")


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


class NoisyLayer(nn.Module):
    """A Conv2d or Linear with PNI / CNI weight noise and/or PNI activation noise.

    The wrapped layer stays at ``.layer`` (its ``weight``/``bias`` are the clean weights).
    """

    def __init__(
        self,
        layer: nn.Conv2d | nn.Linear,
        weight_noise: str | None = "pni",
        activation_noise: bool = False,
        init: float = 0.25,
        granularity: str = "layer",
        rank: int = 5,
        diag_init: float = 0.0625,
        factor_init: float = 0.01,
    ):
        super().__init__()
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            raise SmoothinfError(f"noise layers wrap Conv2d or Linear, got {type(layer).__name__}")
        if weight_noise not in (None, "pni", "cni"):
            raise SmoothinfError(f"unknown weight noise {weight_noise!r}; use pni or cni")
        if granularity not in GRANULARITIES:
            raise SmoothinfError(
                f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}"
            )
        if rank < 0:
            raise SmoothinfError(f"rank must be >= 0, got {rank}")
        if init < 0:
            raise SmoothinfError(f"init must be >= 0, got {init}")
        self.layer = layer
        self.weight_noise = weight_noise
        self.activation_noise = activation_noise
        self.num_draws = 1
        self.noise_generator: torch.Generator | None = None
        self.noise_enabled = True
        w = layer.weight
        if weight_noise == "pni":
            shape = {"layer": (1,), "channel": (w.shape[0],) + (1,) * (w.dim() - 1), "element": w.shape}
            self.alpha_w = nn.Parameter(torch.full(shape[granularity], float(init)))
        elif weight_noise == "cni":
            self.diag = nn.Parameter(torch.full((w.numel(),), float(diag_init)))
            self.factor = nn.Parameter(torch.full((w.numel(), rank), float(factor_init)))
        if activation_noise:
            self.alpha_a = nn.Parameter(torch.full((1,), float(init)))

    def extra_repr(self) -> str:
        rank = f", rank={self.factor.shape[1]}" if self.weight_noise == "cni" else ""
        return f"weight_noise={self.weight_noise}{rank}, activation_noise={self.activation_noise}"

    def sample_weight_noise(self, draws: int, base: torch.Tensor | None = None) -> torch.Tensor:
        """Weight noise (draws, *W.shape) with the layer's current learned parameters, plus ``base``
        (broadcast, e.g. the clean weight W) when given, added in the same pass."""
        w = self.layer.weight
        gen = self.noise_generator
        shape = (draws,) + tuple(w.shape)
        if self.weight_noise == "pni":
            eta = _randn(shape, w, gen)
            scale = self.alpha_w * w.detach().std()
            return scale * eta if base is None else torch.addcmul(base, scale, eta)
        e = _randn((draws, w.numel()), w, gen)
        u = _randn((draws, self.factor.shape[1]), w, gen)
        scale = torch.sqrt((w.std() * self.diag).abs() + 1e-20)
        low_rank = u @ self.factor.T if base is None else torch.addmm(base.reshape(1, -1), u, self.factor.T)
        return torch.addcmul(low_rank, scale, e).reshape(shape)

    def _forward_per_draw(self, x: torch.Tensor, weight: torch.Tensor, draws: int) -> torch.Tensor:
        """The layer with per-draw weights ``weight`` (draws, *W.shape) on example-major ``x``."""
        bias = self.layer.bias
        if draws == 1:
            w = weight[0]
            if isinstance(self.layer, nn.Linear):
                return F.linear(x, w, bias)
            return self.layer._conv_forward(x, w, bias)
        if x.shape[0] % draws:
            raise SmoothinfError(f"batch of {x.shape[0]} rows is not {draws} draws of equal size")
        n = x.shape[0] // draws
        if isinstance(self.layer, nn.Linear):
            # (n, draws, ..., in) -> draw-major (draws, n * ..., in) for bmm, and back
            inner = x.shape[1:-1]
            xs = x.reshape(n, draws, -1, x.shape[-1]).transpose(0, 1).reshape(draws, -1, x.shape[-1])
            out = torch.bmm(xs, weight.transpose(1, 2))
            if bias is not None:
                out = out + bias
            out = out.view(draws, n, -1, weight.shape[1]).transpose(0, 1)
            return out.reshape((x.shape[0],) + tuple(inner) + (weight.shape[1],))
        conv = self.layer
        if conv.padding_mode != "zeros":
            raise SmoothinfError("per-draw weight noise supports zero padding only")
        c = x.shape[1]
        xs = x.reshape((n, draws * c) + tuple(x.shape[2:]))  # a view for contiguous rows
        wd = weight.reshape((draws * weight.shape[1],) + tuple(weight.shape[2:]))
        b = bias.repeat(draws) if bias is not None else None
        out = F.conv2d(xs, wd, b, conv.stride, conv.padding, conv.dilation, conv.groups * draws)
        return out.reshape((x.shape[0], weight.shape[1]) + tuple(out.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.noise_enabled or self.weight_noise is None:
            out = self.layer(x)
        else:
            draws = max(1, int(self.num_draws))
            weight = self.sample_weight_noise(draws, base=self.layer.weight)
            out = self._forward_per_draw(x, weight, draws)
        if self.noise_enabled and self.activation_noise:
            out = out + self.alpha_a * out.detach().std() * _randn(out.shape, out, self.noise_generator)
        return out


class InputNoise(nn.Module):
    """x + sigma * N(0, I) (pixel units, not clipped), then the wrapped ``inner`` module (Normalize).

    ``sigma`` is a parameter when ``learn_sigma`` (kept >= 0 by abs), else a buffer; both are saved.
    """

    def __init__(self, inner: nn.Module, sigma: float = 0.25, learn_sigma: bool = False):
        super().__init__()
        if sigma < 0:
            raise SmoothinfError(f"input noise sigma must be >= 0, got {sigma}")
        self.inner = inner
        value = torch.tensor([float(sigma)])
        if learn_sigma:
            self.sigma = nn.Parameter(value)
        else:
            self.register_buffer("sigma", value)
        self.num_draws = 1
        self.noise_generator: torch.Generator | None = None
        self.noise_enabled = True

    def extra_repr(self) -> str:
        return f"sigma={float(self.sigma.abs()):.4g}, learned={isinstance(self.sigma, nn.Parameter)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise_enabled:
            x = x + self.sigma.abs() * _randn(x.shape, x, self.noise_generator)
        return self.inner(x)
