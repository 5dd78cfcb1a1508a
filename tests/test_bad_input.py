"""Every bad input, one table: exit code 2, one line naming the flag/field/file and what was
expected, no traceback, and nothing new under the results root (``splits/`` included).

Each row builds what it needs (a protocol file, a tiny data set in its real format, a broken
file), runs the CLI in-process and compares the results root before and after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fmssl_bench.benchmark.cli import main
from fmssl_bench.datasets.synthetic import synthetic_case
from helpers import make_folder2d, make_la

LA_CASES = "2018LA_Seg_Training Set"
TINY2D = dict(train={"iterations": 1, "checkpoint_every": 1}, eval_workers=1)
TINY3D = dict(net={"n_filters": 2}, train={"iterations": 2, "patch": [16, 16, 16], "checkpoint_every": 1},
              inference={"patch": [16, 16, 16], "stride": [16, 16, 16]}, eval_workers=1)
FOLDER2D = dict(resize=[32, 32], train={"iterations": 1, "patch": [32, 32]}, eval_workers=1)


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Env:
    """What a row can build; ``names`` fills the ``{...}`` placeholders of its expected fragments."""

    def __init__(self, tmp_path: Path, make_protocol: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp, self.out, self.monkeypatch = tmp_path, tmp_path / "runs", monkeypatch
        self._make_protocol = make_protocol
        self.names: dict[str, str] = {"out": str(self.out)}

    def protocol(self, base: str = "synthetic-2d", tiny: dict | None = None, **overrides: Any) -> str:
        path = self._make_protocol(base, **_merge(TINY2D if tiny is None else tiny, overrides))
        self.names["proto"] = path
        return path

    def raw_protocol(self, text: str) -> str:
        path = self.tmp / "raw.yaml"
        path.write_text(text)
        self.names["proto"] = str(path)
        return str(path)

    def la(self) -> Path:
        root = make_la(self.tmp / "LA")
        self.names["la"] = str(root)
        return root

    def h5(self, case: str) -> Path:
        path = Path(self.names["la"]) / LA_CASES / case / "mri_norm2.h5"
        self.names["h5"] = str(path)
        return path

    def folder(self) -> Path:
        root = make_folder2d(self.tmp / "folder", n=12)
        self.names["folder"] = str(root)
        return root

    def nnunet(self, n: int = 8) -> Path:
        root = self.tmp / "nn"
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        for k in range(n):
            image, label = synthetic_case((20, 20, 16), seed=9, index=k)
            affine = np.diag([0.8, 0.8, 2.5, 1.0])
            nib.save(nib.Nifti1Image(image[0], affine), str(root / "imagesTr" / f"case_{k:03d}_0000.nii.gz"))
            nib.save(nib.Nifti1Image((label > 0).astype(np.uint8), affine), str(root / "labelsTr" / f"case_{k:03d}.nii.gz"))
        (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1},
                                                       "numTraining": n, "file_ending": ".nii.gz"}))
        self.names["nn"] = str(root)
        return root


# ----------------------------------------------------------------------------- argv builders


def syn(env: Env, *extra: str, method: str = "supervised", protocol: str | None = None, labeled: str = "4") -> list[str]:
    """A synthetic-2d run (no files needed) with a tiny protocol."""
    return ["--method", method, "--dataset", "synthetic-2d", "--labeled", labeled,
            "--protocol", protocol or env.protocol(), "--out", str(env.out), "--no-progress", *extra]


def bad_protocol(**overrides: Any) -> Callable[[Env], list[str]]:
    return lambda env: syn(env, protocol=env.protocol(**overrides))


def la_run(env: Env, *extra: str, labeled: str = "2", method: str = "supervised") -> list[str]:
    root = Path(env.names["la"]) if "la" in env.names else env.la()
    return ["--method", method, "--dataset", "la", "--data-root", str(root), "--labeled", labeled,
            "--protocol", env.protocol("la-smoke", tiny=TINY3D), "--out", str(env.out), "--no-progress", *extra]


def folder_run(env: Env, method: str = "supervised") -> list[str]:
    return ["--method", method, "--dataset", "folder2d", "--data-root", env.names["folder"], "--labeled", "4",
            "--protocol", env.protocol(tiny=FOLDER2D), "--out", str(env.out), "--no-progress"]


def nn_run(env: Env) -> list[str]:
    return ["--method", "supervised", "--dataset", "nnunet", "--data-root", env.names["nn"], "--labeled", "2",
            "--protocol", env.protocol("synthetic-3d", tiny=TINY3D), "--out", str(env.out), "--no-progress"]


def _rewrite(path: Path, **datasets: np.ndarray) -> None:
    with h5py.File(path, "a") as f:
        for key, value in datasets.items():
            del f[key]
            f[key] = value


def _truncate(path: Path, fraction: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


# ----------------------------------------------------------------------------- rows that need data changes


def la_without(key: str, case: str) -> Callable[[Env], list[str]]:
    def make(env: Env) -> list[str]:
        env.la()
        with h5py.File(env.h5(case), "a") as f:
            del f[key]
        return la_run(env)
    return make


def la_label_shape(env: Env) -> list[str]:
    env.la()
    _rewrite(env.h5("CASE001"), label=np.zeros((10, 10, 10), np.uint8))
    return la_run(env)


def la_label_values(env: Env) -> list[str]:
    env.la()
    path = env.h5("CASE007")  # a test case
    with h5py.File(path, "r") as f:
        label = f["label"][()]
    label[0, 0, 0] = 3
    _rewrite(path, label=label)
    return la_run(env)


def la_nan(env: Env) -> list[str]:
    env.la()
    path = env.h5("CASE004")  # an unlabeled case for mean_teacher
    with h5py.File(path, "r") as f:
        image = f["image"][()]
    image[1, 2, 3] = np.nan
    _rewrite(path, image=image)
    return la_run(env, method="mean_teacher")


def la_truncated(env: Env) -> list[str]:
    env.la()
    _truncate(env.h5("CASE003"))  # cut in the middle of its datasets
    return la_run(env, method="mean_teacher")  # an unlabeled case: supervised never reads it


def la_no_train_list(env: Env) -> list[str]:
    (env.la() / "train.list").unlink()
    return la_run(env)


def folder_garbage(env: Env) -> list[str]:
    (env.folder() / "images" / "img003.png").write_bytes(b"this is not a png")
    return folder_run(env, method="mean_teacher")  # an unlabeled image: supervised never reads it


def folder_truncated(env: Env) -> list[str]:
    _truncate(env.folder() / "images" / "img005.png")  # its header says 48x56; the pixel data ends early
    return folder_run(env, method="mean_teacher")  # an unlabeled image: supervised never reads it


def folder_mask_size(env: Env) -> list[str]:
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(env.folder() / "masks" / "img002.png")
    return folder_run(env)


def nn_label_affine(env: Env) -> list[str]:
    root = env.nnunet()
    path = root / "labelsTr" / "case_002.nii.gz"
    label = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asanyarray(label.dataobj), np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    return nn_run(env)


def nn_label_shape(env: Env) -> list[str]:
    root = env.nnunet()
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 15), np.uint8), np.diag([0.8, 0.8, 2.5, 1.0])),
             str(root / "labelsTr" / "case_004.nii.gz"))
    return nn_run(env)


def nn_truncated(env: Env) -> list[str]:
    _truncate(env.nnunet() / "imagesTr" / "case_006_0000.nii.gz")
    return nn_run(env)


def corrupt_checkpoint(env: Env) -> list[str]:
    argv = syn(env)
    assert main(argv) == 0
    (ckpt,) = env.out.glob("synthetic-2d/supervised/*/*/*/checkpoint_train.pt")
    (ckpt.parent / "summary.json").unlink()  # incomplete: the run resumes from the checkpoint
    ckpt.write_bytes(b"\x00garbage")
    env.names["ckpt"] = str(ckpt)
    return argv


def out_under_a_file(env: Env) -> list[str]:
    blocker = env.tmp / "blocker"
    blocker.write_text("a file where the results root should be")
    env.out = blocker / "runs"
    env.names["out"] = str(env.out)
    return syn(env)


def no_fmssl_data(env: Env) -> list[str]:
    env.monkeypatch.delenv("FMSSL_DATA", raising=False)
    return ["--method", "supervised", "--dataset", "la", "--protocol", env.protocol("la-smoke", tiny=TINY3D),
            "--out", str(env.out)]


def missing_data_root(env: Env) -> list[str]:
    return ["--method", "supervised", "--dataset", "la", "--data-root", str(env.tmp / "nowhere"), "--labeled", "2",
            "--protocol", env.protocol("la-smoke", tiny=TINY3D), "--out", str(env.out)]


@dataclass(frozen=True)
class Bad:
    id: str
    argv: Callable[[Env], list[str]]
    expected: tuple[str, ...]


CASES = [
    # ---- command-line flags and ranges
    Bad("seed-negative", lambda e: syn(e, "--seed", "-1"), ("--seed -1", "non-negative")),
    Bad("iterations-zero", lambda e: syn(e, "--iterations", "0"), ("--iterations 0", "at least 1")),
    Bad("iterations-negative", lambda e: syn(e, "--iterations", "-5"), ("--iterations -5", "at least 1")),
    Bad("stage-iterations-zero", lambda e: syn(e, "--stage-iterations", "train=0"), ("--stage-iterations train=0", "at least 1")),
    Bad("stage-iterations-text", lambda e: syn(e, "--stage-iterations", "train=ten"), ("--stage-iterations", "STAGE=N")),
    Bad("labeled-zero", lambda e: syn(e, labeled="0"), ("--labeled 0", "at least 1")),
    Bad("labeled-negative", lambda e: syn(e, labeled="-3"), ("--labeled -3", "at least 1")),
    Bad("labeled-text", lambda e: syn(e, labeled="abc"), ("--labeled", "expected a count")),
    Bad("labeled-percent", lambda e: syn(e, labeled="150%"), ("--labeled 150%", "(0, 100]")),
    Bad("labeled-too-many", lambda e: syn(e, labeled="41"), ("--labeled 41", "only 40")),
    Bad("labeled-too-many-la", lambda e: la_run(e, labeled="7"), ("--labeled 7", "only 6")),
    Bad("unknown-method", lambda e: syn(e, method="no_such_method"), ("no_such_method", "mean_teacher")),
    Bad("unknown-dataset", lambda e: ["--method", "supervised", "--dataset", "no_such_dataset", "--out", str(e.out)],
        ("no_such_dataset", "synthetic-2d")),
    Bad("unknown-protocol", lambda e: syn(e, protocol="no_such_protocol"), ("no_such_protocol", "la-smoke")),
    Bad("protocol-file-missing", lambda e: syn(e, protocol=str(e.tmp / "nope.yaml")), ("nope.yaml", "file not found")),
    Bad("protocol-3d-for-2d", lambda e: syn(e, protocol="synthetic-3d"), ("--protocol synthetic-3d", "is 2D")),
    Bad("oracle-method", lambda e: syn(e, method="sam_zero_shot"), ("--method sam_zero_shot", "fmssl-bench oracle")),
    Bad("device-unknown", lambda e: syn(e, "--device", "banana"), ("--device 'banana'", "auto, cpu or cuda")),
    Bad("method-without-dataset", lambda e: ["--method", "supervised", "--out", str(e.out)], ("--method and --dataset",)),
    # ---- method arguments (typed, declared by each method)
    Bad("arg-not-a-number", lambda e: syn(e, "--method-arg", "consistency=abc", method="mean_teacher"),
        ("--method-arg consistency=abc", "expected a number >= 0", "mean_teacher")),
    Bad("arg-out-of-range", lambda e: syn(e, "--method-arg", "ema_decay=1.5", method="mean_teacher"),
        ("--method-arg ema_decay=1.5", "a number in [0, 1)")),
    Bad("arg-union", lambda e: syn(e, "--method-arg", "iters_per_epoch=fast", method="mean_teacher"),
        ("--method-arg iters_per_epoch=fast", "'auto' or a number > 0")),
    Bad("arg-int-not-float", lambda e: syn(e, "--method-arg", "sam_every=1.5", method="semisam"),
        ("--method-arg sam_every=1.5", "an integer >= 1")),
    Bad("arg-int-range", lambda e: syn(e, "--method-arg", "sam_every=0", method="semisam"),
        ("--method-arg sam_every=0", "an integer >= 1")),
    Bad("arg-choice", lambda e: syn(e, "--method-arg", "prompt=circle", method="semisam"),
        ("--method-arg prompt=circle", "one of box, points, box+points")),
    Bad("arg-unknown", lambda e: syn(e, "--method-arg", "nope=1", method="mean_teacher"),
        ("--method-arg nope", "unknown argument", "consistency")),
    Bad("arg-method-takes-none", lambda e: syn(e, "--method-arg", "consistency=1"),
        ("--method-arg consistency", "'supervised' takes no arguments")),
    Bad("arg-no-equals", lambda e: syn(e, "--method-arg", "consistency", method="mean_teacher"),
        ("--method-arg 'consistency'", "KEY=VALUE")),
    Bad("arg-checkpoints-per-generalist", lambda e: syn(e, "--method-arg", "fm_checkpoint=/x/a.pth", method="semisam_plus"),
        ("--method-arg fm_checkpoint=/x/a.pth", "1 checkpoint(s) for 2 generalist(s)")),
    Bad("arg-unknown-generalist", lambda e: syn(e, "--method-arg", "generalist=nope", method="semisam"),
        ("--method-arg generalist=nope", "unknown generalist 'nope'", "litemedsam")),
    Bad("protocol-arg-range-own", lambda e: syn(e, method="mean_teacher",
                                               protocol=e.protocol(method_args={"mean_teacher": {"ema_decay": 2}})),
        ("{proto}: method_args.mean_teacher.ema_decay 2", "a number in [0, 1)")),
    Bad("protocol-arg-unknown", lambda e: syn(e, method="mean_teacher",
                                             protocol=e.protocol(method_args={"mean_teacher": {"typo": 1}})),
        ("{proto}: method_args.mean_teacher.typo", "unknown argument")),
    # ---- protocol fields: type, range, consistency; the error names the file and the field
    Bad("train-iterations-text", bad_protocol(train={"iterations": "ten"}),
        ("{proto}: train.iterations 'ten': expected an integer >= 1",)),
    Bad("train-iterations-zero", bad_protocol(train={"iterations": 0}), ("train.iterations 0: expected an integer >= 1",)),
    Bad("train-lr-negative", bad_protocol(train={"lr": -1}), ("{proto}: train.lr -1: expected a number > 0",)),
    Bad("train-lr-yaml-text", bad_protocol(train={"lr": "1e-3"}), ("train.lr '1e-3'", "decimal point")),
    Bad("train-momentum", bad_protocol(train={"momentum": 1.0}), ("train.momentum 1.0", "in [0, 1)")),
    Bad("train-batch-size-bool", bad_protocol(train={"batch_size": True}), ("train.batch_size True", "an integer >= 1")),
    Bad("train-labeled-bs", bad_protocol(train={"labeled_bs": 9}), ("train.labeled_bs 9", "batch_size (8)")),
    Bad("train-patch-dims", bad_protocol(train={"patch": [64]}), ("train.patch [64] has 1 dims; expected 2",)),
    Bad("train-patch-text", bad_protocol(train={"patch": ["a", 64]}), ("train.patch ['a', 64]", "a list of integers >= 1")),
    Bad("train-optimizer", bad_protocol(train={"optimizer": "lion"}), ("train.optimizer 'lion'", "one of sgd, adam, adamw")),
    Bad("train-schedule", bad_protocol(train={"schedule": "cosine"}), ("train.schedule 'cosine'", "one of step, poly, constant")),
    Bad("train-gamma", bad_protocol(train={"gamma": 0}), ("train.gamma 0", "in (0, 1]")),
    Bad("train-weight-decay", bad_protocol(train={"weight_decay": -0.1}), ("train.weight_decay -0.1", ">= 0")),
    Bad("train-poly-power", bad_protocol(train={"poly_power": 0}), ("train.poly_power 0", "> 0")),
    Bad("train-step-size", bad_protocol(train={"step_size": 0}), ("train.step_size 0", "an integer >= 1")),
    Bad("train-checkpoint-every", bad_protocol(train={"checkpoint_every": 0}), ("train.checkpoint_every 0", ">= 1")),
    Bad("train-log-every", bad_protocol(train={"log_every": -1}), ("train.log_every -1", ">= 1")),
    Bad("train-augment", bad_protocol(train={"augment": ["flip"]}), ("train.augment ['flip']", "rot_flip, random_crop")),
    Bad("train-not-a-mapping", bad_protocol(train=5), ("{proto}: train 5", "a mapping")),
    Bad("train-unknown-key", bad_protocol(train={"lr_typo": 1}), ("section 'train'", "lr_typo")),
    Bad("stage-field", bad_protocol(stages={"finetune": {"lr": "fast"}}), ("{proto}: stages.finetune.lr 'fast'", "a number > 0")),
    Bad("inference-stride", bad_protocol(inference={"stride": [128, 64]}), ("inference.stride [128, 64]", "1..the patch [64, 64]")),
    Bad("inference-patch-dims", bad_protocol(inference={"patch": [64, 64, 64], "stride": [64, 64, 64]}),
        ("inference.patch [64, 64, 64] has 3 dims; expected 2",)),
    Bad("inference-mode", bad_protocol(inference={"mode": "tiled"}), ("inference.mode 'tiled'", "sliding_window, whole_image")),
    Bad("net-name", bad_protocol(net={"name": "resnet"}), ("net.name 'resnet'", "one of vnet, unet2d, unet3d")),
    Bad("net-vnet-2d", bad_protocol(net={"name": "vnet"}), ("net.name 'vnet' is a 3D network",)),
    Bad("net-normalization", bad_protocol(net={"normalization": "layernorm"}), ("net.normalization 'layernorm'", "groupnorm")),
    Bad("metrics-value", bad_protocol(metrics={"hd95": "bogus"}), ("{proto}: metrics.hd95 'bogus'", "medpy-pooled")),
    Bad("metrics-key", bad_protocol(metrics={"dice": "x"}), ("metrics: unknown key 'dice'",)),
    Bad("eval-workers", bad_protocol(eval_workers=0), ("{proto}: eval_workers 0: expected an integer >= 1",)),
    Bad("ndim", bad_protocol(ndim=4), ("ndim 4", "in [2, 3]")),
    Bad("resize-zero", bad_protocol(resize=[0, 64]), ("resize [0, 64]", "integers >= 1")),
    Bad("resize-dims", bad_protocol(resize=[64, 64, 64]), ("resize [64, 64, 64] has 3 dims; expected 2",)),
    Bad("protocol-unknown-key", bad_protocol(trian={"iterations": 1}), ("unknown key(s) ['trian']",)),
    Bad("protocol-invalid-yaml", lambda e: syn(e, protocol=e.raw_protocol("name: x\ntrain: [unclosed\n")), ("invalid YAML",)),
    # ---- data: the error names the file
    Bad("data-root-missing", missing_data_root, ("--data-root", "nowhere")),
    Bad("data-root-and-env-missing", no_fmssl_data, ("--data-root", "FMSSL_DATA")),
    Bad("la-train-list-missing", la_no_train_list, ("train.list",)),
    Bad("h5-without-image", la_without("image", "CASE000"), ("{h5}", "'image'")),
    Bad("h5-without-test-label", la_without("label", "CASE006"), ("{h5}",)),
    Bad("h5-label-shape", la_label_shape, ("{h5}", "does not match")),
    Bad("h5-label-values", la_label_values, ("{h5}", "label values", "0..1")),
    Bad("h5-nan", la_nan, ("{h5}", "NaN")),
    Bad("h5-truncated", la_truncated, ("{h5}", "truncated")),
    Bad("png-garbage", folder_garbage, ("img003.png", "unreadable")),
    Bad("png-truncated", folder_truncated, ("img005.png", "truncated")),
    Bad("mask-size", folder_mask_size, ("masks/img002.png", "does not match image shape")),
    Bad("nifti-affine", nn_label_affine, ("labelsTr/case_002.nii.gz", "affine differs", "case_002_0000.nii.gz")),
    Bad("nifti-shape", nn_label_shape, ("labelsTr/case_004.nii.gz", "does not match")),
    Bad("nifti-truncated", nn_truncated, ("imagesTr/case_006_0000.nii.gz", "truncated or damaged NIfTI")),
    # ---- the results root
    Bad("corrupt-checkpoint-on-resume", corrupt_checkpoint, ("{ckpt}", "corrupt")),
    Bad("results-root-unwritable", out_under_a_file, ("--out {out}", "blocker is a file, not a folder")),
]


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def test_the_table_is_large():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Bad, tmp_path, make_protocol, monkeypatch, capsys):
    env = Env(tmp_path, make_protocol, monkeypatch)
    argv = case.argv(env)
    capsys.readouterr()
    before = snapshot(env.out)
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, f"expected a one-line error, got:\n{err}"
    assert err.startswith("fmssl-bench: error: ") and "Traceback" not in captured.err + captured.out
    for fragment in case.expected:
        fragment = fragment.format(**env.names)
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert snapshot(env.out) == before, f"written under the results root: {sorted(snapshot(env.out) - before)}"


def test_other_methods_protocol_args_are_not_checked_against_this_method(tmp_path, make_protocol, monkeypatch):
    """A protocol's ``method_args`` for another method (here an out-of-range one) never fails this run's checks."""
    from fmssl_bench.benchmark.runner import RunSpec, prepare

    env = Env(tmp_path, make_protocol, monkeypatch)
    proto = env.protocol(method_args={"mean_teacher": {"ema_decay": 2}})
    prep = prepare(RunSpec(method="supervised", dataset="synthetic-2d", labeled="4", protocol=proto, out=str(env.out)))
    assert prep.method_args == {} and not env.out.exists()


def test_check_data_reports_every_problem(capsys, tmp_path):
    la_dir = make_la(tmp_path / "LA")
    bad_image = la_dir / LA_CASES / "CASE002" / "mri_norm2.h5"
    bad_label = la_dir / LA_CASES / "CASE006" / "mri_norm2.h5"
    with h5py.File(bad_image, "r") as f:
        image = f["image"][()]
    image[0, 0, 0] = np.inf
    _rewrite(bad_image, image=image)
    _rewrite(bad_label, label=np.full((40, 36, 24), 5, np.uint8))
    (la_dir / "test.list").write_text("CASE006\nCASE007\nGHOST\n")
    rc = main(["check-data", "--dataset", "la", "--data-root", str(la_dir)])
    out = capsys.readouterr().out
    assert rc == 1
    assert str(bad_image) in out and str(bad_label) in out and "GHOST" in out
    assert "3 problem(s)" in out


def test_check_data_healthy(capsys, tmp_path):
    la_dir = make_la(tmp_path / "LA")
    assert main(["check-data", "--dataset", "la", "--data-root", str(la_dir)]) == 0
    assert "8 cases OK" in capsys.readouterr().out
