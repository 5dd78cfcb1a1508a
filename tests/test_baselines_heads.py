"""Baselines that need extra network heads (DTC, URPC, CCT, SS-Net, MagicNet) and the heads themselves.

Tiny randomly initialised real networks (the synthetic protocols' VNet with 4 filters, MONAI UNet
with channels 8..64): each method's step runs with a finite loss, a few steps on a fixed batch
lower it, and each method's special part is checked directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmssl_bench.benchmark.protocol import load_protocol
from fmssl_bench.errors import ConfigError
from fmssl_bench.methods.cct import CCT
from fmssl_bench.methods.dtc import DTC, signed_distance, signed_distance_target
from fmssl_bench.methods.magicnet import MagicNet, from_cubes, partition, recover, to_cubes
from fmssl_bench.methods.nets import build_net
from fmssl_bench.methods.perturbations import PERTURBATIONS, vat_loss
from fmssl_bench.methods.ssnet import SSNet
from fmssl_bench.methods.uncertainty import pyramid_rectified_consistency
from fmssl_bench.methods.urpc import URPC
from helpers import losses_after_steps, synthetic_batch, tiny_method


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(ndim: int, **options):
    proto = load_protocol(f"synthetic-{ndim}d")
    torch.manual_seed(0)
    return build_net(proto.net, 1, 3, ndim, **options)


# ----------------------------------------------------------------------------- the heads


@pytest.mark.parametrize("ndim", [2, 3])
def test_heads_leave_the_plain_network_unchanged(ndim):
    plain, headed = _net(ndim), _net(ndim, heads=("sdf", "pyramid", "aux"))
    plain_keys = set(plain.state_dict())
    assert plain_keys < set(headed.state_dict())
    assert all(k.startswith("heads.") for k in set(headed.state_dict()) - plain_keys)
    # same initial weights for the plain part: the heads are built after it
    assert all(torch.equal(v, headed.state_dict()[k]) for k, v in plain.state_dict().items())
    x = torch.randn(2, 1, *(32,) * ndim)
    plain.eval(), headed.eval()
    with torch.no_grad():
        out = headed.forward_heads(x)
        assert torch.allclose(plain(x), out.logits, atol=1e-6)
        assert torch.allclose(headed(x), headed.segment_head(headed.decode(headed.encode(x))), atol=1e-6)
    assert out.sdf.shape == (2, 2, *(32,) * ndim) and out.sdf.abs().max() <= 1
    assert all(p.shape == out.logits.shape for p in out.pyramid) and len(out.pyramid) >= 3
    assert torch.equal(out.pyramid[0], out.logits)
    assert len(out.aux) == 3 and all(a.shape == out.logits.shape for a in out.aux)


def test_a_net_with_heads_loads_a_plain_state_dict():
    plain, headed = _net(3), _net(3, heads=("sdf",))
    missing, unexpected = headed.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("heads.sdf") for k in missing)


@pytest.mark.parametrize("heads, message", [(("sdff",), "unknown network head 'sdff'"),
                                             (("aux",), "perturbations")])
def test_bad_heads_are_refused_with_their_name(heads, message):
    with pytest.raises(ConfigError, match=message):
        build_net(load_protocol("synthetic-3d").net, 1, 2, 3, heads=heads, aux_perturbations=("nope",) if "aux" in heads else ())


# ----------------------------------------------------------------------------- special parts


def test_dtc_signed_distance_of_a_disk():
    yy, xx = np.mgrid[:41, :41]
    disk = (yy - 20) ** 2 + (xx - 20) ** 2 <= 10 ** 2
    sdf = signed_distance(disk)
    assert sdf.min() == pytest.approx(-1) and sdf.max() == pytest.approx(1)
    assert (sdf[disk] <= 0).all() and (sdf[~disk] > 0).all()
    assert sdf[20, 20] == pytest.approx(-1)  # the centre is the deepest inside point
    assert sdf[20, 10] == 0 and sdf[10, 20] == 0  # on the inner boundary
    # monotone along a ray from the centre outwards
    ray = sdf[20, 20:]
    assert (np.diff(ray) >= 0).all()
    assert (signed_distance(np.zeros((5, 5), bool)) == 0).all() and (signed_distance(np.ones((5, 5), bool)) == -1).all()
    target = signed_distance_target(np.stack([disk.astype(int), 2 * disk.astype(int)]), 3)
    assert target.shape == (2, 2, 41, 41) and np.array_equal(target[0, 0], sdf) and (target[0, 1] == 0).all()


def test_urpc_consistency_is_zero_for_agreeing_levels_and_weights_the_disagreeing_one_down():
    p = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    loss, weights = pyramid_rectified_consistency([p, p.clone(), p.clone()])
    assert float(loss) == pytest.approx(0, abs=1e-6) and all(torch.allclose(w, torch.ones_like(w)) for w in weights)
    q = torch.softmax(5 * torch.randn(2, 3, 8, 8), 1)
    loss, weights = pyramid_rectified_consistency([p, p.clone(), q])
    assert float(loss) > 0 and float(weights[2].mean()) < float(weights[0].mean())


def test_cct_perturbations_change_features_and_one_decoder_each(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(2, 8, 6, 6) + 0.1
    for name, perturb in PERTURBATIONS.items():
        y = perturb(x)
        assert y.shape == x.shape and not torch.equal(y, x), name
    m = tiny_method(CCT, 2, tmp_path, perturbations=("noise", "dropout"))
    assert len(m.student.heads["aux"]) == 2


def test_ssnet_vat_perturbation_raises_the_distance_of_a_trained_direction():
    net = _net(2).eval()
    x = torch.randn(2, 1, 32, 32)

    def distance(p, q):
        return ((p - q) ** 2).mean()

    adv = vat_loss(net, x, distance, xi=10.0, eps=6.0, iterations=1)
    with torch.no_grad():
        p = torch.softmax(net(x), 1)
        rand = torch.randn_like(x)
        rand = 6.0 * rand / rand.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        random_distance = distance(torch.softmax(net(x + rand), 1), p)
    adv = float(adv.detach())
    assert adv > 0 and math.isfinite(adv) and adv >= 0.5 * float(random_distance)


def test_magicnet_partition_and_cubes_are_exact_inverses():
    torch.manual_seed(0)
    t = torch.randn(4, 2, 32, 32, 48)
    perm = torch.argsort(torch.rand(4, 2, 2, 3), dim=0)
    mixed = partition(t, perm, 16)
    assert not torch.equal(mixed, t)
    # every cube of the mix is one image's cube at the same location
    assert torch.equal(mixed[1, :, :16, 16:32, 32:48], t[perm[1, 0, 1, 2], :, :16, 16:32, 32:48])
    assert torch.equal(recover(mixed, perm, 16), t)
    cubes = to_cubes(t[0], 16)
    assert cubes.shape == (12, 2, 16, 16, 16)
    assert torch.equal(from_cubes(cubes, (2, 2, 3)), t[0])
    assert torch.equal(cubes[1], t[0, :, 16:32, :16, :16])  # location x + gx y + gx gy z


def test_magicnet_is_3d_only_with_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="defined for 3D data only"):
        tiny_method(MagicNet, 2, tmp_path)


# ----------------------------------------------------------------------------- every method trains


CASES = [(DTC, 2, {}), (DTC, 3, {}), (URPC, 2, {}), (URPC, 3, {}), (CCT, 2, {}), (CCT, 3, {}),
         (SSNet, 2, {}), (SSNet, 3, {}), (MagicNet, 3, {"cube_size": 16, "blend_after": 2, "dist_every": 2})]


@pytest.mark.parametrize("cls, ndim, args", CASES, ids=[f"{c.name}-{d}d" for c, d, _ in CASES])
def test_method_steps_are_finite_and_lower_the_loss(cls, ndim, args, tmp_path):
    torch.manual_seed(0)
    # a run far enough into the ramp that the unsupervised terms count
    method = tiny_method(cls, ndim, tmp_path, total=8, **args)
    batch = synthetic_batch(ndim)
    first = method.training_step(batch, 7)
    assert torch.isfinite(first.loss) and all(math.isfinite(v) for v in first.logs.values())
    losses = losses_after_steps(method, batch, steps=8)
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < losses[0], losses
