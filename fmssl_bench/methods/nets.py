"""Segmentation networks: UA-MT's 3D VNet and MONAI's UNet.

The VNet reproduces the architecture of UA-MT / SSL4MIS (``n_filters`` 16, batch norm, 3x3x3
convolutions, strided-conv down-sampling, transposed-conv up-sampling, additive skips, dropout
after the bottleneck and the last decoder block; 9.45 M parameters with 1 input channel and 2
classes) because every LA/BraTS number in the seed papers was measured with it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm3d(channels)
    if kind == "groupnorm":
        return nn.GroupNorm(num_groups=min(16, channels), num_channels=channels)
    if kind == "instancenorm":
        return nn.InstanceNorm3d(channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"net.normalization {kind!r}; expected batchnorm, groupnorm, instancenorm or none")


def _conv_block(stages: int, c_in: int, c_out: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(stages):
        layers += [nn.Conv3d(c_in if i == 0 else c_out, c_out, 3, padding=1), _norm(norm, c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _down(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 2, stride=2), _norm(norm, c_out), nn.ReLU(inplace=True))


def _up(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose3d(c_in, c_out, 2, stride=2), _norm(norm, c_out), nn.ReLU(inplace=True))


class VNet(nn.Module):
    """UA-MT's VNet: 5 resolution levels with (1, 2, 3, 3, 3) conv stages, additive skips."""

    def __init__(self, in_channels: int = 1, n_classes: int = 2, n_filters: int = 16,
                 normalization: str = "batchnorm", dropout: bool = True) -> None:
        super().__init__()
        f = n_filters
        widths = [f, 2 * f, 4 * f, 8 * f, 16 * f]
        stages = [1, 2, 3, 3, 3]
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        c_in = in_channels
        for level, (w, s) in enumerate(zip(widths, stages)):
            self.encoder.append(_conv_block(s, c_in, w, normalization))
            if level < 4:
                self.down.append(_down(w, widths[level + 1], normalization))
            c_in = widths[level + 1] if level < 4 else w
        self.up = nn.ModuleList(_up(widths[level], widths[level - 1], normalization) for level in range(4, 0, -1))
        self.decoder = nn.ModuleList(_conv_block(s, w, w, normalization) for w, s in zip(widths[3::-1], [3, 3, 2, 1]))
        self.dropout = nn.Dropout3d(p=0.5, inplace=False) if dropout else nn.Identity()
        self.out_conv = nn.Conv3d(f, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < 4:
                skips.append(x)
                x = self.down[level](x)
        x = self.dropout(x)
        for up, block, skip in zip(self.up, self.decoder, reversed(skips)):
            x = block(up(x) + skip)
        return self.out_conv(self.dropout(x))


def build_net(config, in_channels: int, n_classes: int, ndim: int) -> nn.Module:
    """Network named by a protocol's ``net`` section."""
    name = config.name
    if name == "vnet":
        if ndim != 3:
            raise ConfigError(f"net.name 'vnet' is 3D; the data set is {ndim}D (use unet2d)")
        return VNet(in_channels, n_classes, config.n_filters, config.normalization, config.dropout)
    if name in ("unet2d", "unet3d"):
        from monai.networks.nets import UNet

        dims = 2 if name == "unet2d" else 3
        if dims != ndim:
            raise ConfigError(f"net.name {name!r} is {dims}D; the data set is {ndim}D")
        return UNet(
            spatial_dims=dims,
            in_channels=in_channels,
            out_channels=n_classes,
            channels=tuple(config.channels),
            strides=(2,) * (len(config.channels) - 1),
            num_res_units=2,
            norm="batch" if config.normalization == "batchnorm" else config.normalization.replace("norm", ""),
            dropout=0.1 if config.dropout else 0.0,
        )
    raise ConfigError(f"net.name {name!r}; expected vnet, unet2d or unet3d")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
