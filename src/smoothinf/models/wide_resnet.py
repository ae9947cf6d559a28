"""Wide ResNets (Zagoruyko & Komodakis 2016): WRN-depth-k as a pre-activation ``ResNet``.

WRN-d-k has 3 stages of n = (d - 4) / 6 pre-activation blocks of widths 16k, 32k, 64k after a
16-channel stem, optional dropout between the two convs of each block, and a final BN-ReLU.
It reuses ``smoothinf.models.resnet.ResNet``; legacy checkpoints in the TRADES / Madry naming
(``block1.layer.0.convShortcut``...) are renamed by ``smoothinf.models.legacy``.
"""

from __future__ import annotations

from smoothinf.errors import SmoothinfError
from smoothinf.models.registry import register_model
from smoothinf.models.resnet import ResNet


def wide_resnet(
    num_classes, in_channels, mean, std, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0
) -> ResNet:
    """WRN-``depth``-``widen_factor``; ``depth`` must be 6n + 4."""
    if depth < 10 or (depth - 4) % 6:
        raise SmoothinfError(f"Wide-ResNet depth must be 6n + 4 (16, 28, 34, 40, ...), got {depth}")
    if widen_factor < 1:
        raise SmoothinfError(f"widen_factor must be >= 1, got {widen_factor}")
    n = (depth - 4) // 6
    k = int(widen_factor)
    return ResNet(
        num_classes,
        in_channels,
        mean,
        std,
        blocks=(n, n, n),
        widths=(16 * k, 32 * k, 64 * k),
        block="preact",
        stem_width=16,
        dropout=dropout,
    )


def _register_wide_resnet(depth: int, widen_factor: int) -> None:
    def builder(num_classes, in_channels, mean, std, dropout: float = 0.0) -> ResNet:
        return wide_resnet(num_classes, in_channels, mean, std, depth, widen_factor, dropout)

    builder.__doc__ = f"Wide-ResNet-{depth}-{widen_factor} (Zagoruyko & Komodakis 2016), optional dropout."
    register_model(f"wide_resnet{depth}_{widen_factor}", input_shape=(3, 32, 32))(builder)


for _depth, _k in ((28, 10), (34, 10)):
    _register_wide_resnet(_depth, _k)


@register_model("wide_resnet", input_shape=(3, 32, 32))
def wide_resnet_any(
    num_classes, in_channels, mean, std, depth: int = 16, widen_factor: int = 4, dropout: float = 0.0
) -> ResNet:
    """Wide-ResNet of any depth (6n + 4) and widen factor (default WRN-16-4)."""
    return wide_resnet(num_classes, in_channels, mean, std, depth, widen_factor, dropout)
