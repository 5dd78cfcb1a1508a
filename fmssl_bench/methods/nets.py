"""Segmentation networks: UA-MT's 3D VNet and MONAI's UNet, with optional extra heads.

The VNet reproduces the architecture of UA-MT / SSL4MIS (``n_filters`` 16, batch norm, 3x3x3
convolutions, strided-conv down-sampling, transposed-conv up-sampling, additive skips, dropout
after the bottleneck and the last decoder block; 9.45 M parameters with 1 input channel and 2
classes) because every LA/BraTS number in the seed papers was measured with it.

Heads
-----
Methods that need more than the segmentation logits ask the factory for *heads*:
``build_net(config, in_channels, n_classes, ndim, heads=("sdf",))`` (inside a method:
``self.ctx.build_net(heads=("sdf",))``). ``net(x)`` stays the main head's logits for every user
(the predictor at test time); the extra outputs come from ``net.forward_heads(x)``, a
:class:`HeadOutputs`:

``logits``
    the main head, exactly ``net(x)`` for the same random state.
``sdf`` (adds parameters)
    DTC's signed-distance regression head: ``tanh`` of a 1x1 convolution of the last decoder
    features (the ones the segmentation head sees, after the VNet's dropout), one channel per
    foreground class (``n_classes - 1``; 1 for a 1-class net).
``pyramid`` (adds parameters)
    URPC's per-decoder-level logits, each up-sampled (tri/bi-linear) to the input size, finest
    first; ``pyramid[0]`` is ``logits`` itself. Each coarser level is a 1x1 convolution of that
    decoder level's output behind channel dropout (p = 0.2, 0.3, 0.5 from the second-finest
    level down, the per-level dropout of SSL4MIS' ``unet_3D_dv_semi``, applied on the head branch
    only so the main path is unchanged).
``aux`` (adds parameters)
    CCT's auxiliary decoders: one decoder (same architecture as the main one, own weights) per
    entry of ``aux_perturbations`` (default noise, dropout, feature dropout: UNet_CCT's aux1..3),
    fed the encoder features perturbed by that function (:mod:`.perturbations`); their logits.
``features`` (a tap, no parameters)
    the input of the main segmentation head. VNet: the last decoder features after dropout
    (``n_filters`` channels, input resolution; SS-Net's / MagicNet's "embedding"). MONAI UNet:
    the concatenated input of its top up-sampling block (``2 * channels[0]`` channels, *half*
    the input resolution), because MONAI's last block maps straight to the classes.
``bottleneck`` (a tap, no parameters)
    the deepest encoder features (VNet: after the bottleneck dropout); MagicNet's
    location-classifier input.

``features`` and ``bottleneck`` are always filled; the parameter heads only when requested, so a
plain network has exactly the parameters (and state-dict keys) it always had, and a net with
heads loads a plain state dict with ``strict=False`` (only the head keys missing). Both nets
also expose ``encode(x) -> list`` (skips..., bottleneck), ``decode(feats) -> features`` and
``segment_head(features) -> logits`` (``net(x) == segment_head(decode(encode(x)))``), for
methods that run the halves separately (MagicNet's cube-wise decoding).

The MONAI UNet is a nested ``Sequential(down, SkipConnection(...), up)``; :class:`HeadedUNet`
(a subclass: same modules, same state dict, same ``forward``) walks that nesting once per call
to run the same computation level by level.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

HEADS = ("sdf", "pyramid", "aux", "features", "bottleneck")
"""Every head a net can be asked for (see the module docstring)."""
PARAMETER_HEADS = ("sdf", "pyramid", "aux")
AUX_PERTURBATIONS = ("noise", "dropout", "feature_dropout")
"""UNet_CCT's three auxiliary decoders (SSL4MIS ``networks/unet.py``), in its order."""
PYRAMID_DROPOUT = (0.2, 0.3, 0.5)
"""Channel dropout on the pyramid head branches, second-finest level first (unet_3D_dv_semi)."""
SUPPORTED_HEADS = {"vnet": HEADS, "unet2d": HEADS, "unet3d": HEADS}


@dataclass
class HeadOutputs:
    """What ``net.forward_heads(x)`` returns; heads that were not requested are None."""

    logits: torch.Tensor
    features: torch.Tensor
    bottleneck: torch.Tensor
    sdf: torch.Tensor | None = None
    pyramid: list[torch.Tensor] | None = None
    aux: list[torch.Tensor] | None = None


def check_heads(heads: Sequence[str], net_name: str, aux_perturbations: Sequence[str]) -> tuple[str, ...]:
    """``heads`` validated for the net ``net_name``; ConfigError names both when they do not fit."""
    from .perturbations import PERTURBATIONS

    heads = tuple(heads)
    supported = SUPPORTED_HEADS.get(net_name, ())
    for head in heads:
        if head not in HEADS:
            raise ConfigError(f"unknown network head {head!r} requested for net {net_name!r}; expected some of {', '.join(HEADS)}")
        if head not in supported:
            raise ConfigError(f"network head {head!r} is not available for net {net_name!r}"
                              f" (it supports {', '.join(supported) or 'no heads'})")
    if "aux" in heads:
        unknown = [p for p in aux_perturbations if p not in PERTURBATIONS]
        if unknown or not aux_perturbations:
            raise ConfigError(f"aux head of net {net_name!r}: perturbations {list(aux_perturbations)}; "
                              f"expected one or more of {', '.join(PERTURBATIONS)}")
    return heads


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


def _upsample(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(t.shape[2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="trilinear" if t.dim() == 5 else "bilinear", align_corners=False)


def _channel_dropout(t: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return (F.dropout3d if t.dim() == 5 else F.dropout2d)(t, p, training)


def _perturbation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from .perturbations import PERTURBATIONS

    return PERTURBATIONS[name]


class _Heads:
    """What VNet and HeadedUNet share: head construction bookkeeping and ``forward_heads``."""

    head_names: tuple[str, ...]
    aux_perturbations: tuple[str, ...]
    heads: nn.ModuleDict

    def _fill_heads(self, x: torch.Tensor, feats: list[torch.Tensor]) -> HeadOutputs:
        features, levels = self._decode(feats, None)
        logits = self.segment_head(features)
        out = HeadOutputs(logits=logits, features=features, bottleneck=feats[-1])
        size = x.shape[2:]
        if "sdf" in self.heads:
            out.sdf = torch.tanh(self.heads["sdf"](features))
        if "pyramid" in self.heads:
            finest_first = levels[::-1]  # levels run deepest first
            out.pyramid = [logits] + [
                _upsample(conv(_channel_dropout(level, PYRAMID_DROPOUT[min(i, len(PYRAMID_DROPOUT) - 1)], self.training)), size)
                for i, (conv, level) in enumerate(zip(self.heads["pyramid"], finest_first))
            ]
        if "aux" in self.heads:
            out.aux = []
            for name, decoder in zip(self.aux_perturbations, self.heads["aux"]):
                perturb = _perturbation(name)
                aux_features, _ = self._decode([perturb(f) for f in feats], decoder)
                out.aux.append(self._aux_logits(aux_features, decoder))
        return out

    def forward_heads(self, x: torch.Tensor) -> HeadOutputs:
        """Logits, taps and every requested head of one forward pass (see the module docstring)."""
        return self._fill_heads(x, self.encode(x))


class VNet(_Heads, nn.Module):
    """UA-MT's VNet: 5 resolution levels with (1, 2, 3, 3, 3) conv stages, additive skips."""

    size_divisor = 16

    def __init__(self, in_channels: int = 1, n_classes: int = 2, n_filters: int = 16,
                 normalization: str = "batchnorm", dropout: bool = True, heads: Sequence[str] = (),
                 aux_perturbations: Sequence[str] = AUX_PERTURBATIONS) -> None:
        super().__init__()
        self.head_names = check_heads(heads, "vnet", aux_perturbations)
        self.aux_perturbations = tuple(aux_perturbations)
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
        self.up, self.decoder, self.out_conv = self._make_decoder(widths, normalization, n_classes)
        self.dropout = nn.Dropout3d(p=0.5, inplace=False) if dropout else nn.Identity()
        self.bottleneck_channels = widths[-1]
        # heads are built after the plain network, so its initial weights do not depend on them
        self.heads = nn.ModuleDict()
        if "sdf" in self.head_names:
            self.heads["sdf"] = nn.Conv3d(f, max(1, n_classes - 1), 1)
        if "pyramid" in self.head_names:  # decoder levels 2f (1/2), 4f (1/4), 8f (1/8)
            self.heads["pyramid"] = nn.ModuleList(nn.Conv3d(w, n_classes, 1) for w in widths[1:4])
        if "aux" in self.head_names:
            self.heads["aux"] = nn.ModuleList(
                nn.ModuleDict(dict(zip(("up", "decoder", "out_conv"), self._make_decoder(widths, normalization, n_classes))))
                for _ in self.aux_perturbations)

    @staticmethod
    def _make_decoder(widths: list[int], norm: str, n_classes: int) -> tuple[nn.ModuleList, nn.ModuleList, nn.Conv3d]:
        up = nn.ModuleList(_up(widths[level], widths[level - 1], norm) for level in range(4, 0, -1))
        decoder = nn.ModuleList(_conv_block(s, w, w, norm) for w, s in zip(widths[3::-1], [3, 3, 2, 1]))
        # the decoder's creation order (up, decoder, then out_conv) keeps UA-MT's initial weights
        return up, decoder, nn.Conv3d(widths[0], n_classes, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four skip features and the bottleneck (after the bottleneck dropout)."""
        feats = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < 4:
                feats.append(x)
                x = self.down[level](x)
        feats.append(self.dropout(x))
        return feats

    def _decode(self, feats: list[torch.Tensor], decoder: nn.ModuleDict | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        up, blocks = (self.up, self.decoder) if decoder is None else (decoder["up"], decoder["decoder"])
        x = feats[-1]
        levels = []
        for u, block, skip in zip(up, blocks, reversed(feats[:-1])):
            x = block(u(x) + skip)
            levels.append(x)
        return self.dropout(x), levels[:-1]

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The main decoder: the last decoder features after dropout (``features``)."""
        return self._decode(feats, None)[0]

    def segment_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.out_conv(features)

    def _aux_logits(self, features: torch.Tensor, decoder: nn.ModuleDict) -> torch.Tensor:
        return decoder["out_conv"](features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment_head(self.decode(self.encode(x)))


def _monai_unet_class():
    from monai.networks.nets import UNet

    return UNet


def _reset(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


class HeadedUNet(_Heads, _monai_unet_class()):
    """MONAI's UNet (same modules, state dict and ``forward``) with ``forward_heads`` and heads."""

    def __init__(self, *, heads: Sequence[str] = (), aux_perturbations: Sequence[str] = AUX_PERTURBATIONS,
                 net_name: str = "unet2d", **unet_kwargs) -> None:
        super().__init__(**unet_kwargs)
        self.head_names = check_heads(heads, net_name, aux_perturbations)
        self.aux_perturbations = tuple(aux_perturbations)
        chans = list(self.channels)
        self.size_divisor = int(math.prod(int(s) if isinstance(s, int) else int(max(s)) for s in self.strides))
        self.bottleneck_channels = chans[-1]
        conv = nn.Conv3d if self.dimensions == 3 else nn.Conv2d
        n_classes = self.out_channels
        self.heads = nn.ModuleDict()
        top_in = 2 * chans[0] if len(chans) > 2 else chans[0] + chans[1]  # MONAI's ``upc`` of the top block
        if "sdf" in self.head_names:  # a second top block from the same input, to n_classes - 1 channels
            self.heads["sdf"] = self._get_up_layer(top_in, max(1, n_classes - 1), self.strides[0], True)
        if "pyramid" in self.head_names:  # outputs of the up blocks below the top: channels[0], channels[1], ...
            self.heads["pyramid"] = nn.ModuleList(conv(chans[i - 1], n_classes, 1) for i in range(1, len(chans) - 1))
        if "aux" in self.head_names:
            _, _, ups = self._parts()
            self.heads["aux"] = nn.ModuleList(nn.ModuleList(_reset(copy.deepcopy(u)) for u in ups)
                                              for _ in self.aux_perturbations)

    def _parts(self) -> tuple[list[nn.Module], nn.Module, list[nn.Module]]:
        """(down blocks top first, bottom block, up blocks top first) of MONAI's nesting."""
        from monai.networks.layers.simplelayers import SkipConnection

        downs, ups = [], []
        seq = self.model
        while True:
            downs.append(seq[0])
            ups.append(seq[2])
            sub = seq[1]
            if not isinstance(sub, SkipConnection):
                raise ConfigError("MONAI UNet layout not recognised (expected Sequential(down, SkipConnection, up))")
            inner = sub.submodule
            if isinstance(inner, nn.Sequential) and len(inner) == 3 and isinstance(inner[1], SkipConnection):
                seq = inner
            else:
                return downs, inner, ups

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of every down block (top first) and of the bottom block."""
        downs, bottom, _ = self._parts()
        feats = []
        for d in downs:
            x = d(x)
            feats.append(x)
        feats.append(bottom(x))
        return feats

    def _decode(self, feats: list[torch.Tensor], decoder: nn.ModuleList | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ups = self._parts()[2] if decoder is None else list(decoder)
        y = feats[-1]
        levels = []
        for i in range(len(ups) - 1, 0, -1):  # SkipConnection: cat([input, submodule(input)])
            y = ups[i](torch.cat([feats[i], y], 1))
            levels.append(y)
        return torch.cat([feats[0], y], 1), levels

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The input of the top up block (``features``: half the input resolution)."""
        return self._decode(feats, None)[0]

    def segment_head(self, features: torch.Tensor) -> torch.Tensor:
        return self._parts()[2][0](features)

    def _aux_logits(self, features: torch.Tensor, decoder: nn.ModuleList) -> torch.Tensor:
        return decoder[0](features)


def build_net(config, in_channels: int, n_classes: int, ndim: int, *, heads: Sequence[str] = (),
              aux_perturbations: Sequence[str] = AUX_PERTURBATIONS) -> nn.Module:
    """Network named by a protocol's ``net`` section, with the requested extra ``heads``.

    ``net(x)`` is always the logits of the main head; see the module docstring for
    ``forward_heads`` and the heads.
    """
    name = config.name
    if name == "vnet":
        if ndim != 3:
            raise ConfigError(f"net.name 'vnet' is 3D; the data set is {ndim}D (use unet2d)")
        return VNet(in_channels, n_classes, config.n_filters, config.normalization, config.dropout,
                    heads=heads, aux_perturbations=aux_perturbations)
    if name in ("unet2d", "unet3d"):
        dims = 2 if name == "unet2d" else 3
        if dims != ndim:
            raise ConfigError(f"net.name {name!r} is {dims}D; the data set is {ndim}D")
        return HeadedUNet(
            heads=heads,
            aux_perturbations=aux_perturbations,
            net_name=name,
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
