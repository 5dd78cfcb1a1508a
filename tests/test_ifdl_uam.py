"""IFDL's uncertainty-aware module (seed 000, Eq. 1-4) on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fmssl_bench.methods.ifdl_uam import (
    accumulated_confidence,
    confidence,
    fixed_key_frames,
    fuse_label_probabilities,
    history_weights,
    kinds_from_class_names,
    key_frames,
    label_confidence,
    label_masks,
    object_prompts,
    parse_prompt_kinds,
    pass_moments,
    slice_prompt,
)
from fmssl_bench.methods.uncertainty import dropout_only


def test_eq1_variance_is_the_population_variance_of_the_passes():
    passes = [np.array([[0.0, 0.2]]), np.array([[1.0, 0.2]]), np.array([[1.0, 0.8]]), np.array([[0.0, 0.8]])]
    mean, variance = pass_moments(iter(passes))
    np.testing.assert_allclose(mean, [[0.5, 0.5]])
    np.testing.assert_allclose(variance, [[0.25, 0.09]], atol=1e-7)  # 1/N, not 1/(N-1)
    np.testing.assert_allclose(confidence(variance), [[0.75, 0.91]], atol=1e-6)  # C = 1 - U


def test_key_frame_is_the_most_confident_slice_of_each_block_of_three():
    conf = np.ones((4, 4, 8), np.float32)
    conf[..., 0] = 0.1   # block 0..2: slice 1 and 2 tie -> first (1)
    conf[..., 5] = 2.0   # block 3..5: slice 5
    conf[..., 6] = 0.5   # block 6..7 (short): slice 7
    assert key_frames(conf, block=3, axis=-1) == [1, 5, 7]
    assert key_frames(np.moveaxis(conf, -1, 0), block=3, axis=0) == [1, 5, 7]
    assert fixed_key_frames(8, 3) == [0, 3, 6]


def test_history_weights_favour_the_latest_round_and_sum_to_one():
    w = history_weights(4, 0.5)
    np.testing.assert_allclose(w, np.array([1, 2, 4, 8]) / 15)
    assert w.sum() == pytest.approx(1.0) and history_weights(1).tolist() == [1.0]
    for t in range(1, 7):
        assert history_weights(t, 0.3).sum() == pytest.approx(1.0)


def test_accumulated_mask_forgets_an_early_error():
    early_wrong = np.array([1.0, 0.0])
    later = np.array([0.0, 0.9])
    acc = accumulated_confidence([early_wrong, later, later], 0.5)  # weights 1/7, 2/7, 4/7
    np.testing.assert_allclose(acc, [1 / 7, 0.9 * 6 / 7], rtol=1e-6)
    assert label_masks(acc).tolist() == [False, True]
    assert label_masks(accumulated_confidence([early_wrong], 0.5)).tolist() == [True, False]


def test_label_confidence_needs_both_a_prediction_and_agreement():
    mean = np.array([[0.1, 0.9, 0.6]]).repeat(2, 0)  # (K=2, 3 voxels)
    mean[0] = 1 - mean[1]
    variance = np.array([[0.0, 0.0, 0.2]]).repeat(2, 0)
    conf = label_confidence(mean, variance)
    assert conf.shape == (1, 3)
    assert label_masks(conf)[0].tolist() == [False, True, False]  # uncertain foreground is left out


def _two_bones_and_a_shell():
    bone = np.zeros((24, 24, 6), bool)
    bone[2:8, 3:12, 1:5] = True
    bone[14:20, 10:20, 0:4] = True  # two separate bones
    shell = np.zeros_like(bone)
    shell[8:10, 3:12, 1:5] = True  # cartilage on the first bone's surface
    return bone, shell


def test_bones_get_one_box_per_component_on_each_key_frame():
    bone, _ = _two_bones_and_a_shell()
    objects = object_prompts(bone, [1, 4], "box", axis=-1)
    assert len(objects) == 2
    first, second = sorted(objects, key=lambda o: o[min(o)].box[1])
    assert sorted(first) == [1, 4] and sorted(second) == [1]  # the second bone ends at slice 3
    np.testing.assert_array_equal(first[1].box, [3, 2, 11, 7])  # x0, y0, x1, y1
    np.testing.assert_array_equal(second[1].box, [10, 14, 19, 19])
    assert all(p.points is None for o in objects for p in o.values())


def test_specks_below_a_fraction_of_the_largest_component_get_no_prompt():
    bone, _ = _two_bones_and_a_shell()
    bone[22, 22, 1] = True  # a one-voxel speck on a key frame
    assert len(object_prompts(bone, [1, 4], "box")) == 3  # the paper's text: every connected area
    assert len(object_prompts(bone, [1, 4], "box", min_fraction=0.01)) == 2
    assert object_prompts(np.zeros_like(bone), [1], "box", min_fraction=0.01) == []


def test_cartilage_gets_positive_and_negative_points_per_component():
    _, shell = _two_bones_and_a_shell()
    two = shell.copy()
    two[8:10, 16:22, 2] = True  # a second piece on slice 2 only, joined to nothing
    objects = object_prompts(two, [2], "points", axis=-1, n_neg=2)
    assert len(objects) == 2
    for obj in objects:
        prompt = obj[2]
        assert prompt.box is None
        pos = prompt.points[prompt.point_labels == 1]
        neg = prompt.points[prompt.point_labels == 0]
        assert len(pos) == 1 and len(neg) == 2
        x, y = pos[0].astype(int)
        assert two[y, x, 2]
        assert not any(two[int(b), int(a), 2] for a, b in neg)


def test_points_click_every_piece_of_one_object_cross_section():
    ring = np.zeros((20, 20), bool)
    ring[4:7, 3:17] = True
    ring[12:15, 3:17] = True  # two pieces of one object in this slice
    prompt = slice_prompt(ring, "points", n_neg=0)
    assert prompt.n_points == 2 and (prompt.point_labels == 1).all()
    assert slice_prompt(np.zeros((5, 5), bool), "box").is_empty()
    with pytest.raises(ValueError, match="prompt kind"):
        slice_prompt(ring, "scribble")


def test_fusion_and_prompt_kind_parsing():
    probs = np.array([[0.9, 0.2, 0.6], [0.7, 0.3, 0.8]])
    assert fuse_label_probabilities(probs).tolist() == [1, 0, 2]
    assert parse_prompt_kinds("box", 3) == ["box"] * 3
    assert parse_prompt_kinds("box,points", 2) == ["box", "points"]
    with pytest.raises(ValueError, match="one per foreground"):
        parse_prompt_kinds("box,points,box", 2)
    knee = ("background", "femur", "femoral_cartilage", "tibia", "tibial_cartilage")
    assert kinds_from_class_names(knee) == ["box", "points", "box", "points"]
    assert kinds_from_class_names(("background", "left_atrium")) == ["box"]


def test_dropout_only_keeps_batchnorm_in_eval_and_dropout_stochastic():
    net = nn.Sequential(nn.Conv3d(1, 4, 1), nn.BatchNorm3d(4), nn.Dropout3d(0.5))
    net.train()
    x = torch.ones(1, 1, 2, 2, 2)
    with dropout_only(net):
        assert not net[1].training and net[2].training
        outs = {tuple(net(x).flatten().tolist()) for _ in range(8)}
    assert len(outs) > 1  # stochastic passes differ
    assert all(m.training for m in net.modules())  # modes restored
