"""Test-time inference: UA-MT's sliding window in 3D, whole image in 2D.

The 3D path uses MONAI's ``sliding_window_inference`` with a per-axis overlap chosen so that its
scan interval equals UA-MT's stride (``int(patch * (1 - overlap)) == stride``); MONAI then visits
exactly UA-MT's ``test_single_case`` grid (``ceil((size - patch) / stride) + 1`` windows per axis,
the last one flush with the border), pads small volumes symmetrically with zeros and averages the
softmax of overlapping windows uniformly, as UA-MT does. ``tests/test_inference.py`` checks the
equivalence against a direct transcription of UA-MT's loop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from scipy import ndimage

from ..protocol import InferenceConfig, Protocol
from ..views import resize_image


def stride_to_overlap(patch: Sequence[int], stride: Sequence[int]) -> tuple[float, ...]:
    """Per-axis overlap for which MONAI's ``int(patch * (1 - overlap))`` is exactly ``stride``."""
    for p, s in zip(patch, stride):
        if not 0 < s <= p:
            raise ValueError(f"inference.stride {list(stride)} must be in 1..patch {list(patch)}")
    return tuple(0.0 if s == p else 1.0 - (s + 0.5) / p for p, s in zip(patch, stride))


@torch.no_grad()
def sliding_window_probs(net: torch.nn.Module, image: np.ndarray, cfg: InferenceConfig, device: torch.device) -> np.ndarray:
    """Averaged softmax ``(K, *spatial)`` of ``net`` over the UA-MT window grid."""
    x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
    probs = sliding_window_inference(
        x,
        roi_size=tuple(cfg.patch),
        sw_batch_size=cfg.sw_batch_size,
        predictor=lambda patch: torch.softmax(net(patch), dim=1),
        overlap=stride_to_overlap(cfg.patch, cfg.stride),
        mode="constant",
        padding_mode="constant",
        cval=0.0,
    )
    return probs[0].float().cpu().numpy()


@torch.no_grad()
def whole_image_probs(net: torch.nn.Module, image: np.ndarray, size: Sequence[int] | None, device: torch.device) -> np.ndarray:
    """Softmax at the protocol resolution, resized back to the image's own size."""
    original = image.shape[1:]
    x = resize_image(image, size) if size is not None else image
    probs = torch.softmax(net(torch.from_numpy(np.ascontiguousarray(x))[None].to(device)), dim=1)
    if tuple(probs.shape[2:]) != tuple(original):
        probs = F.interpolate(probs, size=tuple(original), mode="bilinear", align_corners=False)
    return probs[0].float().cpu().numpy()


def connectivity_structure(ndim: int, connectivity: int | None = None) -> np.ndarray:
    """The neighbourhood of a connectivity given as a neighbour count (6/18/26 in 3D, 4/8 in 2D).

    scipy's ``generate_binary_structure(ndim, rank)``: rank 1 = faces (6 / 4), rank 2 = faces and
    edges (18 in 3D), rank ndim = every neighbour (26 / 8; scikit-image ``label``'s default, which
    SemiSAM's ``getLargestCC`` uses). None = faces.
    """
    if connectivity is None:
        return ndimage.generate_binary_structure(ndim, 1)
    for rank in range(1, ndim + 1):
        structure = ndimage.generate_binary_structure(ndim, rank)
        if int(structure.sum()) - 1 == connectivity:
            return structure
    raise ValueError(f"connectivity {connectivity}: expected one of "
                     f"{[int(ndimage.generate_binary_structure(ndim, r).sum()) - 1 for r in range(1, ndim + 1)]} in {ndim}D")


def largest_component(pred: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """Keep the largest connected component of each foreground class (UA-MT's optional LCC,
    SemiSAM's ``getLargestCC``) under ``connectivity`` (see :func:`connectivity_structure`)."""
    structure = connectivity_structure(pred.ndim, connectivity)
    out = np.zeros_like(pred)
    for label in np.unique(pred):
        if label == 0:
            continue
        components, n = ndimage.label(pred == label, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[components == sizes.argmax()] = label
    return out


def predict(net: torch.nn.Module, image: np.ndarray, protocol: Protocol, device: torch.device) -> np.ndarray:
    """Label map at the image's original resolution, with optional LCC."""
    net.eval()
    cfg = protocol.inference
    if cfg.mode == "sliding_window":
        size = protocol.training_size(tuple(image.shape[1:]))
        if size is None:
            probs = sliding_window_probs(net, image, cfg, device)
        else:  # a scaled 3D protocol: predict in the training frame, resample the softmax back
            low = sliding_window_probs(net, resize_image(image, size), cfg, device)
            probs = F.interpolate(torch.from_numpy(low)[None], size=tuple(image.shape[1:]), mode="trilinear",
                                  align_corners=False)[0].numpy()
    else:
        probs = whole_image_probs(net, image, protocol.resize, device)
    pred = probs.argmax(0).astype(np.uint8)
    connectivity = protocol.largest_component_connectivity()
    return pred if connectivity is None else largest_component(pred, connectivity)
