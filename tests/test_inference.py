"""The MONAI-based sliding window must reproduce UA-MT's ``test_single_case`` exactly."""

import math

import numpy as np
import pytest
import torch

from fmssl_bench.benchmark.evaluation.inference import largest_component, sliding_window_probs, stride_to_overlap, whole_image_probs
from fmssl_bench.benchmark.protocol import InferenceConfig


def ua_mt_test_single_case(net, image, stride_xy, stride_z, patch, num_classes):
    """Direct transcription of UA-MT's code/test_util.py::test_single_case (reference only)."""
    w, h, d = image.shape
    pads = [max(p - s, 0) for p, s in zip(patch, (w, h, d))]
    add_pad = any(pads)
    lr = [(q // 2, q - q // 2) for q in pads]
    if add_pad:
        image = np.pad(image, lr, mode="constant", constant_values=0)
    ww, hh, dd = image.shape
    sx = math.ceil((ww - patch[0]) / stride_xy) + 1
    sy = math.ceil((hh - patch[1]) / stride_xy) + 1
    sz = math.ceil((dd - patch[2]) / stride_z) + 1
    score_map = np.zeros((num_classes,) + image.shape, dtype=np.float32)
    cnt = np.zeros(image.shape, dtype=np.float32)
    for x in range(sx):
        xs = min(stride_xy * x, ww - patch[0])
        for y in range(sy):
            ys = min(stride_xy * y, hh - patch[1])
            for z in range(sz):
                zs = min(stride_z * z, dd - patch[2])
                p = image[xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]]
                with torch.no_grad():
                    y1 = torch.softmax(net(torch.from_numpy(np.ascontiguousarray(p))[None, None]), 1)[0].numpy()
                score_map[:, xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]] += y1
                cnt[xs:xs + patch[0], ys:ys + patch[1], zs:zs + patch[2]] += 1
    score_map = score_map / cnt[None]
    if add_pad:
        (a, _), (b, _), (c, _) = lr
        score_map = score_map[:, a:a + w, b:b + h, c:c + d]
    return score_map


@pytest.mark.parametrize("shape", [(40, 37, 21), (20, 30, 12), (33, 16, 25)])
def test_sliding_window_equals_ua_mt_test_single_case(shape):
    torch.manual_seed(0)
    # a small randomly initialised position-dependent network (real conv layers, tiny for speed)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 3, padding=1)).eval()
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    patch, stride_xy, stride_z = (24, 24, 16), 7, 5
    ref = ua_mt_test_single_case(net, image, stride_xy, stride_z, patch, 3)
    cfg = InferenceConfig(mode="sliding_window", patch=patch, stride=(stride_xy, stride_xy, stride_z), sw_batch_size=3)
    ours = sliding_window_probs(net, image[None], cfg, torch.device("cpu"))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert (ours.argmax(0) == ref.argmax(0)).mean() > 0.999


def test_stride_to_overlap_gives_integer_stride_for_paper_grid():
    for p, s in ((112, 18), (80, 4), (64, 48), (24, 7), (64, 64)):
        (ov,) = stride_to_overlap((p,), (s,))
        assert int(p * (1 - ov)) == s
    with pytest.raises(ValueError):
        stride_to_overlap((10,), (11,))


def test_whole_image_resizes_back_to_original_size():
    net = torch.nn.Conv2d(3, 2, 1).eval()
    probs = whole_image_probs(net, np.random.rand(3, 50, 70).astype(np.float32), (32, 32), torch.device("cpu"))
    assert probs.shape == (2, 50, 70)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_largest_component_keeps_biggest_blob_per_class():
    pred = np.zeros((20, 20), np.uint8)
    pred[1:3, 1:3] = 1
    pred[10:18, 10:18] = 1
    pred[5:7, 12:14] = 2
    out = largest_component(pred)
    assert out[1, 1] == 0 and out[12, 12] == 1 and out[5, 12] == 2


def test_augment_transform_replays_and_inverts():
    from fmssl_bench.benchmark.training.augment import augment

    rng_image = np.random.default_rng(0)
    for shape, patch in (((30, 26, 12), (16, 16, 16)), ((20, 20), (24, 24)), ((40, 33), (16, 16))):
        image = rng_image.normal(size=(1, *shape)).astype(np.float32)
        label = (rng_image.random(shape) > 0.5).astype(np.uint8)
        for seed in range(6):
            out, lab, t = augment(image, label, ("rot_flip", "random_crop"), patch, np.random.default_rng(seed))
            np.testing.assert_array_equal(t.apply(image), out)
            np.testing.assert_array_equal(t.apply(label), lab)
            back = t.invert(out)
            covered = ~np.isnan(back)
            assert covered.any()
            np.testing.assert_array_equal(back[covered], image[covered])
