"""IFDL's semantic-aware memory bank (SA-MB, seed 000 Eq. 5) on sam2's real modules.

No SAM2 weights can be had here: every model below is a *small randomly initialised* SAM2 (sam2's
own ``sam2.1_hiera_t`` config at a 256 px input), so the tests check the mechanics (groups, mask
input, FIFO, fine-tuning, resume, a round end to end), not segmentation quality.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fmssl_bench.benchmark.cli import main
from fmssl_bench.benchmark.protocol import load_protocol
from fmssl_bench.benchmark.training.context import RunContext
from fmssl_bench.benchmark.views import LabeledView, UnlabeledView
from fmssl_bench.datasets.synthetic import knee_case
from fmssl_bench.foundation.base import Prompts
from fmssl_bench.foundation.sam2_memory import SemanticMemoryBank, SemanticSam2, cartilage_memory_mask
from fmssl_bench.methods.ifdl import IFDL, ClipBatches
from fmssl_bench.methods.ifdl_uam import slice_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (32, 32, 10)
KINDS = "box,points,box,points"


@pytest.fixture(scope="module")
def knee_frames(random_init_sam2):
    """One synthetic knee, its SA-MB model and sam2 features of its slices (computed once for the module)."""
    samb = SemanticSam2(random_init_sam2, dilation=2)
    image, label = knee_case(SHAPE, seed=0, index=0)
    slices01, _ = random_init_sam2._volume_slices(image, -1)
    return samb, image, label, samb.encode_frames(slices01)


def _prompt(samb, label, value, kind, frame):
    mask = label[..., frame] == value
    assert mask.any(), f"label {value} absent from slice {frame} of the test knee"
    return {frame: samb.point_inputs(slice_prompt(mask, kind, 1, np.random.default_rng(0)), *label.shape[:2])}


def _memory_reads(samb):
    """Record the spatial memories (one ``(HW, C)`` block per memory frame) each memory-attention call reads."""
    reads: list[list[torch.Tensor]] = []

    def hook(_module, _args, kwargs):
        memory, ptrs = kwargs["memory"], kwargs["num_obj_ptr_tokens"]
        spatial = memory[: memory.shape[0] - ptrs, 0]
        hw = kwargs["curr"][0].shape[0]
        reads.append(list(spatial.split(hw)))

    return reads, samb.sam.memory_attention.register_forward_pre_hook(hook, with_kwargs=True)


def _same_block(block: torch.Tensor, memories: list[torch.Tensor]) -> bool:
    return any(torch.equal(block, m.flatten(2).permute(2, 0, 1)[:, 0]) for m in memories)


def test_cartilage_memory_mask_is_dilated_bone_and_dilated_cartilage_or_cartilage():
    bone, cart = torch.zeros(1, 1, 7, 7), torch.zeros(1, 1, 7, 7)
    bone[..., 0:3, :] = 1  # a bone surface along rows 0-2
    cart[..., 4, 1:4] = 1  # cartilage one row away from it ...
    cart[..., 6, 6] = 1  # ... and a piece far from any bone
    expected = cart.clone()
    expected[..., 3, 0:5] = 1  # dil(bone) (rows 0-3) & dil(cart) (rows 3-5, cols 0-4, and the far piece's 5-6 x 5-6)
    torch.testing.assert_close(cartilage_memory_mask(bone, cart, radius=1), expected)
    torch.testing.assert_close(cartilage_memory_mask(torch.zeros_like(bone), cart, radius=1), cart)  # no bone: cart
    soft = cartilage_memory_mask(0.5 * bone, 0.8 * cart, radius=1)  # probabilities: min / max of the maps
    assert soft[0, 0, 3, 2] == pytest.approx(0.5) and soft[0, 0, 4, 2] == pytest.approx(0.8)


def test_samb_random_init_sam2_memories_land_in_their_group_and_an_object_reads_only_its_group(knee_frames):
    samb, _, label, frames = knee_frames
    calls = {g: 0 for g in samb.branches}
    hooks = [samb.branches[g].register_forward_hook(lambda *_, g=g: calls.__setitem__(g, calls[g] + 1))
             for g in samb.branches]
    bank = SemanticMemoryBank(int(samb.sam.num_maskmem))
    try:
        with torch.no_grad():
            bone_logits = samb.track(frames, _prompt(samb, label, 1, "box", 5), "bone", bank)
            bone_calls = dict(calls)
            bone = torch.cat([bone_logits[f] for f in range(len(frames))])
            reads, handle = _memory_reads(samb)
            samb.track(frames, _prompt(samb, label, 2, "points", 5), "cart", bank, bone)
            handle.remove()
    finally:
        for h in hooks:
            h.remove()
    assert bank.counts() == {"bone": len(frames), "cart": len(frames)}
    assert bone_calls == {"bone": len(frames), "cart": 0}  # bone memories come from the bone branch ...
    assert calls == {"bone": len(frames), "cart": len(frames)}  # ... cartilage memories from the cartilage branch
    (bone_object,), (cart_object,) = bank.groups["bone"], bank.groups["cart"]
    mine = [o["maskmem_features"] for part in cart_object.values() for o in part.values()]
    theirs = [o["maskmem_features"] for part in bone_object.values() for o in part.values()]
    blocks = [b for read in reads for b in read]
    assert reads and len(blocks) > len(reads)  # propagation read memories beyond the conditioning frame
    assert all(_same_block(b, mine) and not _same_block(b, theirs) for b in blocks)  # its group's, never a bone's


def test_samb_random_init_sam2_cartilage_memories_see_the_bones_of_their_frame(knee_frames):
    samb, _, label, frames = knee_frames
    prompt = _prompt(samb, label, 2, "points", 5)
    with torch.no_grad():
        bank = SemanticMemoryBank(int(samb.sam.num_maskmem))
        bone = torch.cat([samb.track(frames, _prompt(samb, label, 1, "box", 5), "bone", bank)[f] for f in range(10)])
        samb.track(frames, prompt, "cart", bank, bone)
        alone = SemanticMemoryBank(int(samb.sam.num_maskmem))
        samb.track(frames, prompt, "cart", alone, None)
    with_bone = bank.groups["cart"][0]["cond_frame_outputs"][5]["maskmem_features"]
    without = alone.groups["cart"][0]["cond_frame_outputs"][5]["maskmem_features"]
    assert not torch.equal(with_bone, without)  # the bone contact band entered the cartilage memory

    session = samb.volume(knee_frames[1][..., 4:6], -1)  # two slices keep it short
    session.segment({1: slice_prompt(label[..., 5] == 2, "points", 1, np.random.default_rng(0))}, "points")
    with pytest.raises(ValueError, match="bone object"):
        session.segment({1: slice_prompt(label[..., 5] == 1, "box")}, "box")


def test_samb_random_init_sam2_groups_keep_sam2s_num_maskmem_fifo(knee_frames):
    samb, _, label, frames = knee_frames
    n_mem = int(samb.sam.num_maskmem)
    assert len(frames) > n_mem + 1  # the window must slide
    bank = SemanticMemoryBank(n_mem)
    reads, handle = _memory_reads(samb)
    try:
        with torch.no_grad():
            box = Prompts(box=np.array([8, 8, 20, 20]))  # any object will do: the window is what is checked
            samb.track(frames, {0: samb.point_inputs(box, *label.shape[:2])}, "bone", bank)
    finally:
        handle.remove()
    (obj,) = bank.groups["bone"]
    assert len(reads) == len(frames) - 1  # frames 1..n-1 read memories; the prompted frame 0 reads none
    assert max(len(r) for r in reads) == n_mem  # the conditioning frame + the last num_maskmem - 1 frames
    last = reads[-1]  # frame n-1 reads frame 0 (conditioning) and frames n-2 .. n-num_maskmem, in FIFO order
    window = [obj["cond_frame_outputs"][0]] + [obj["non_cond_frame_outputs"][f]
                                               for f in range(len(frames) - n_mem, len(frames) - 1)]
    assert all(_same_block(b, [o["maskmem_features"]]) for b, o in zip(last, window, strict=True))
    oldest = obj["non_cond_frame_outputs"][len(frames) - n_mem - 1]["maskmem_features"]
    assert not any(_same_block(b, [oldest]) for b in last)  # first in, first out


def _context(random_init_sam2, make_protocol, tmp_path, stages, n_labeled=2, **extra):
    protocol = load_protocol(make_protocol(
        "synthetic-knee-3d", train={"patch": [32, 32, 16], "iterations": 2, "batch_size": 2, "labeled_bs": 2,
                                    "checkpoint_every": 2, "augment": ["random_crop"]},
        stages=stages, inference={"patch": [32, 32, 16], "stride": [32, 32, 16], "sw_batch_size": 1}))
    cases = [knee_case((32, 32, 16), seed=1, index=i) for i in range(n_labeled + 1)]
    ctx = RunContext(protocol=protocol, labeled=LabeledView([f"l{i}" for i in range(n_labeled)],
                                                            [c[0] for c in cases[:n_labeled]],
                                                            [c[1] for c in cases[:n_labeled]]),
                     unlabeled=UnlabeledView(["u"], [cases[-1][0]]), n_classes=5, in_channels=1, seed=0,
                     run_dir=tmp_path, progress=False)
    ctx.generalists[("sam2_hiera_t", None)] = random_init_sam2
    method = IFDL(ctx, **{**IFDL.defaults, "rounds": 1, "generalist": "sam2_hiera_t", "mc_passes": 2,
                          "threshold": 0.1, "prompt_kinds": KINDS, "memory_bank": "semantic", "samb_clip": 4,
                          "samb_dilation": 2, **extra})
    torch.manual_seed(0)
    method.setup()
    return ctx, method


def _clip_loss(method, batch) -> float:
    torch.manual_seed(0)  # the same dropout draws in sam2's memory attention before and after
    with torch.no_grad():
        return float(method.samb_step(batch, 0).loss)


def test_samb_random_init_sam2_finetuning_lowers_its_loss_on_synthetic_knees(random_init_sam2, make_protocol, tmp_path):
    # the packaged protocol's stages.samb_finetune: the paper's AdamW lr 5e-5; three iterations
    ctx, method = _context(random_init_sam2, make_protocol, tmp_path,
                           {"samb_finetune": {"iterations": 3, "checkpoint_every": 3}}, n_labeled=1)
    batch = ClipBatches(ctx.labeled, 4)(0, [0, 1])
    assert batch.image_l.shape == (1, 1, 32, 32, 4) and (batch.label_l[0, ..., 0] > 0).any()  # prompts on slice 0
    before = _clip_loss(method, batch)
    source = {k: v.clone() for k, v in method.samb.trained.state_dict().items()}
    generalist_before = {n: p.detach().clone() for n, p in random_init_sam2.model.named_parameters()}
    method.finetune_samb()
    after = _clip_loss(method, batch)
    assert after < 0.95 * before, (before, after)  # measured 0.717 -> 0.625; one labeled case: every clip from it
    assert [s["stage"] for s in ctx.stage_log] == ["samb_finetune"]
    stored = ctx.artifacts.load("samb_finetune", "weights", "state")  # torch.load(weights_only=True)
    assert set(stored) == set(source) and any(not torch.equal(stored[k], source[k]) for k in source)
    assert not any(n.startswith("image_encoder") for n in method.samb.trained.state_dict())  # encoder frozen
    # the generalist itself is untouched: SA-MB trains a copy (its image encoder shared, frozen)
    for name, p in random_init_sam2.model.named_parameters():
        assert torch.equal(p, generalist_before[name]), name


def test_samb_random_init_sam2_finetuning_resumes_skipped_with_its_weights(random_init_sam2, make_protocol, tmp_path,
                                                                          capsys):
    stages = {"samb_finetune": {"iterations": 2, "checkpoint_every": 1}}
    _, first = _context(random_init_sam2, make_protocol, tmp_path, stages, n_labeled=1)
    first.finetune_samb()
    trained = {k: v.clone() for k, v in first.samb.trained.state_dict().items()}
    capsys.readouterr()
    ctx, again = _context(random_init_sam2, make_protocol, tmp_path, stages, n_labeled=1)  # a new process, same record
    assert any(not torch.equal(again.samb.trained.state_dict()[k], v) for k, v in trained.items())  # fresh copy
    again.finetune_samb()
    assert "samb_finetune: finished earlier" in capsys.readouterr().err
    assert ctx.stage_log[-1]["skipped"] is True
    for k, v in again.samb.trained.state_dict().items():
        torch.testing.assert_close(v, trained[k], rtol=0, atol=0)  # the trained weights, reloaded


@pytest.mark.slow
def test_samb_random_init_sam2_runs_an_ifdl_round_on_multilabel_knees(random_init_sam2, make_protocol, tmp_path):
    stages = {"pretrain": {"iterations": 300, "optimizer": "adam", "lr": 0.01, "schedule": "constant",
                           "checkpoint_every": 300},
              "samb_finetune": {"iterations": 2, "checkpoint_every": 2}}
    ctx, method = _context(random_init_sam2, make_protocol, tmp_path, stages)
    method.fit()
    pseudo = ctx.artifacts.load("round1", "pseudo_labels", "arrays")["u"]
    assert pseudo.shape == (32, 32, 16) and pseudo.max() <= 4
    summary = ctx.artifacts.load("round1", "summary", "json")
    assert summary["prompted_cases"] == ["u"] and sum(summary["objects"].values()) > 0, summary
    memories = summary["samb_memories"]
    assert (memories["bone"] > 0) == (summary["objects"]["box"] > 0), summary
    assert (memories["cart"] > 0) == (summary["objects"]["points"] > 0), summary
    assert [s["stage"] for s in ctx.stage_log] == ["pretrain", "samb_finetune", "round1"]
    prov = method.provenance()
    assert prov["ifdl"]["memory_bank"] == "semantic"
    assert any("SA-MB" in d for d in prov["deviations"])


def test_semantic_memory_bank_needs_a_sam2_generalist_and_one_clip_per_iteration(make_protocol, tmp_path, capsys):
    out = tmp_path / "runs"
    base = ["--method", "ifdl", "--dataset", "synthetic-knee-3d", "--labeled", "4", "--no-progress", "--out", str(out),
            "--method-arg", "memory_bank=semantic"]
    for name in ("litemedsam", "mobilesam"):
        assert main(base + ["--method-arg", f"generalist={name}"]) == 2
        err = capsys.readouterr().err
        assert "memory_bank=semantic" in err and f"generalist={name}" in err and "sam2_hiera" in err, err
    batched = make_protocol("synthetic-knee-3d", stages={"samb_finetune": {"batch_size": 2, "labeled_bs": 1}})
    assert main(base + ["--method-arg", "generalist=sam2_hiera_t", "--protocol", batched]) == 2
    assert "stages.samb_finetune.batch_size 2" in capsys.readouterr().err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), "a refused run wrote files"


def test_samb_finetune_stage_defaults_to_the_papers_adamw_and_is_part_of_the_identity_only_when_used():
    protocol = load_protocol("synthetic-knee-3d")
    bare = dataclasses.replace(protocol, stages={})  # a protocol without stages.samb_finetune
    config = IFDL.samb_config(bare)
    assert (config.optimizer, config.lr, config.batch_size) == ("adamw", 5e-5, 1)  # seed 000 l.109
    packaged = IFDL.samb_config(protocol)
    assert (packaged.optimizer, packaged.lr, packaged.batch_size) == ("adamw", 5e-5, 1)
    assert "samb_finetune" in IFDL.stages_used({**IFDL.defaults, "memory_bank": "semantic"})
    assert "samb_finetune" not in IFDL.stages_used(IFDL.defaults)
