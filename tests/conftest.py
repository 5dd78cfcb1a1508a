"""Shared fixtures: tiny protocols, real-data locations (skip with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from fmssl_bench.benchmark.protocol import PROTOCOL_DIR


def _deep_update(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture
def make_protocol(tmp_path: Path):
    """Write a protocol YAML derived from a packaged one with overrides; returns its path."""

    def make(base: str, name: str | None = None, **overrides: Any) -> str:
        data = yaml.safe_load((PROTOCOL_DIR / f"{base}.yaml").read_text())
        data = _deep_update(data, overrides)
        data["name"] = name or f"{base}-test"
        path = tmp_path / f"{data['name']}.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    return make


def _shared_path(env: str, sub: str) -> Path | None:
    root = os.environ.get(env)
    if not root:
        return None
    path = Path(root) / sub
    return path if path.exists() else None


@pytest.fixture(scope="session")
def la_root() -> Path:
    path = _shared_path("FMSSL_DATA", "LA")
    if path is None:
        pytest.skip("real LA data not found: set FMSSL_DATA to a folder holding LA/ (CI uses ../shared/data)")
    return path


@pytest.fixture(scope="session")
def kvasir_root() -> Path:
    path = _shared_path("FMSSL_DATA", "Kvasir-SEG")
    if path is None:
        pytest.skip("real Kvasir-SEG data not found: set FMSSL_DATA to a folder holding Kvasir-SEG/ (CI uses ../shared/data)")
    return path


@pytest.fixture
def results(tmp_path: Path, monkeypatch) -> Path:
    out = tmp_path / "runs"
    monkeypatch.setenv("FMSSL_RESULTS", str(out))
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of tiny networks (``pytestmark = usefixtures``).

    Two threads per forward on a shared 2-core machine oversubscribe it (about 10x slower under
    load, measured on the method tests); restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SAM2_TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
"""sam2's smallest configuration: with random weights, the real SAM2 code at test cost (no SAM2 weights here)."""


@pytest.fixture(scope="module")
def random_init_sam2():
    """sam2's real video predictor (hiera-t at 256 px), randomly initialised: no SAM2 weights can be had here."""
    import torch

    from fmssl_bench.foundation import Sam2Generalist, build_sam2_model

    torch.manual_seed(0)
    model = build_sam2_model(SAM2_TINY_CONFIG, hydra_overrides=["++model.image_size=256"])
    return Sam2Generalist("sam2_hiera_t", model)
