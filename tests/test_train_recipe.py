"""The training recipe on synthetic data: sampling, loss going down, checkpoints and resume, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import make_dataset

from inspector.train.augment import AugmentConfig
from inspector.train.cli import main
from inspector.train.datasets import load_dataset
from inspector.train.models import build_model
from inspector.train.recipe import TrainConfig, choose_crop, deployed_from_checkpoint, load_checkpoint, train

torch.set_num_threads(1)  # 2 threads on a shared 2-core box are slower (measured 8x)
SIZE = (64, 96)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list, list[str]]:
    root = make_dataset(tmp_path_factory.mktemp("synthetic"), n=48, size=SIZE, seed=1)
    samples, classes = load_dataset(root)
    return root, samples, classes


def _cfg(task: str, **kw) -> TrainConfig:
    base = dict(
        task=task,
        arch="resnet-tiny",
        scale=None if task == "classifier" else 1.0,
        size=(64, 64) if task == "classifier" else SIZE,
        epochs=8,
        batch=4,
        lr=1e-3,
        lr_schedule="constant",
        warmup_steps=0,
        threads=1,
        augment=AugmentConfig(enabled=False),
        crop=32 if task == "segmenter" else 64,
        plots=False,
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("task", ["recognizer", "segmenter"])
def test_a_few_epochs_reduce_the_loss(data, tmp_path, task):
    _, samples, classes = data
    best = train(_cfg(task, epochs=6), samples, samples[:8], classes, tmp_path)
    history = torch.load(tmp_path / "last.pt", weights_only=False)["history"]
    losses = [h["train_loss"] for h in history]
    assert len(losses) == 6 and best.is_file()
    assert np.mean(losses[-2:]) < 0.75 * losses[0], losses
    assert all(h["replica_divergence"] == 0 for h in history)


def test_resume_continues_exactly(data, tmp_path):
    """Stopped after epoch 1 and resumed == never stopped (weights bit for bit, with augmentation on)."""
    _, samples, classes = data
    cfg = _cfg("recognizer", epochs=3, lr_schedule="cosine", augment=AugmentConfig(), keep_every=1)
    train(cfg, samples, samples[:6], classes, tmp_path / "straight")
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copy(tmp_path / "straight" / "epoch_001.pt", interrupted / "last.pt")
    train(
        _cfg("recognizer", epochs=3, lr_schedule="cosine", augment=AugmentConfig(), resume=True),
        samples,
        samples[:6],
        classes,
        interrupted,
    )
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(interrupted / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


@pytest.mark.parametrize("task", ["recognizer", "segmenter", "classifier"])
def test_the_channels_last_layout_changes_only_the_layout(data, tmp_path, task):
    """NHWC training (the default, for speed) follows the NCHW run step for step, and its checkpoint holds
    plain weights that rebuild the model alone."""
    _, samples, classes = data
    runs = {}
    for layout in (True, False):
        # A few steps: float rounding differs between the layouts and training amplifies it over many steps.
        cfg = _cfg(task, epochs=1, steps_per_epoch=4, augment=AugmentConfig(), channels_last=layout)
        train(cfg, samples, samples[:6], classes, tmp_path / str(layout))
        runs[layout] = torch.load(tmp_path / str(layout) / "last.pt", weights_only=False)
    nhwc, nchw = runs[True], runs[False]
    assert len(nhwc["step_losses"]) == 4
    # The first loss comes before any update: the same arithmetic up to summation order. After it, rounding
    # differences grow with each step.
    np.testing.assert_allclose(nhwc["step_losses"][0], nchw["step_losses"][0], rtol=1e-5)
    np.testing.assert_allclose(nhwc["step_losses"], nchw["step_losses"], rtol=1e-2)
    assert nhwc["model"].keys() == nchw["model"].keys()
    # Adam's first steps move a weight by about lr whatever its gradient's size, so a gradient near 0 that rounds
    # to the other sign in the other layout moves it the other way: up to 2 x lr per step.
    for key, tensor in nhwc["model"].items():
        torch.testing.assert_close(tensor, nchw["model"][key], rtol=0, atol=2 * 4 * 1e-3, msg=key)
    model, _ = load_checkpoint(tmp_path / "True" / "best.pt")
    assert all(p.is_contiguous() for p in model.parameters())


def test_checkpoint_rebuilds_the_model_alone(data, tmp_path):
    _, samples, classes = data
    best = train(_cfg("segmenter", epochs=1), samples, samples[:6], classes, tmp_path)
    model, ckpt = load_checkpoint(best)
    assert type(model).__name__ == "Segmenter" and not model.training
    for key in ("arch", "task", "size", "in_channels", "classes", "mean", "std", "cfg", "seed", "epoch", "metrics"):
        assert key in ckpt
    assert ckpt["classes"] == classes and ckpt["num_classes"] == len(classes) + 1
    deployed, _ = deployed_from_checkpoint(best)
    frames = torch.randint(0, 256, (2, *SIZE, 1), dtype=torch.uint8)
    with torch.no_grad():
        scores = deployed(frames)
    assert scores.shape == (2, len(classes) + 1, *SIZE)


def test_checkpoints_record_the_decoder_width(data, tmp_path):
    """A width other than the architecture's default survives the round trip; a checkpoint written before the
    width was recorded loads with the then default (resnet-small was 256 wide, it is 64 now)."""
    _, samples, classes = data
    best = train(_cfg("deeplabv3plus", epochs=1, decoder_width=32), samples, samples[:6], classes, tmp_path / "w32")
    model, ckpt = load_checkpoint(best)
    assert ckpt["decoder_width"] == 32 and model.classifier.in_channels == 32
    assert TrainConfig(task="segmenter", arch="resnet-small").decoder_width == 64
    legacy = build_model("segmenter", "resnet-small", 1, 3, standardize=ckpt["standardize"], decoder_width=256)
    old = dict(ckpt, task="segmenter", arch="resnet-small", num_classes=3, aux=False, model=legacy.state_dict())
    del old["decoder_width"]
    torch.save(old, tmp_path / "old.pt")
    rebuilt, _ = load_checkpoint(tmp_path / "old.pt")
    assert rebuilt.classifier.in_channels == 128  # half of the 256 decoder
    with pytest.raises(ValueError, match="decoder_width"):
        TrainConfig(task="segmenter", decoder_width=-1)
    with pytest.raises(ValueError, match="arch must be one of"):
        TrainConfig(arch="resnet-huge")


def test_cli_trains_and_plots(data, tmp_path):
    root, _, _ = data
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(root),
        "--task",
        "recognizer",
        "--arch",
        "resnet-tiny",
        "--size",
        "64x96",
        "--epochs",
        "1",
        "--batch",
        "4",
        "--crop",
        "64",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert {"best.pt", "last.pt", "history.json", "loss.png", "predictions.png", "train.log"} <= {
        p.name for p in out.iterdir()
    }
    assert main(["measure-resize", "--data", str(root), "--sizes", "64,64x96"]) == 0


def test_best_pixel_f1_over_thresholds_hand_computed():
    from inspector.train.recipe import best_f1_over_thresholds

    # 5 bins (thresholds 0, .25, .5, .75, 1). Defect pixels at bins 2, 3, 3; background at 0 x 10, 1, 2, 4.
    # t = .5: tp 3, fp 2 (bins 2 and 4), fn 0 -> F1 6/8 = .75; t = .25: 6/9; t = .75: tp 2, fp 1, fn 1 -> 4/6;
    # t = 0: 6/19.
    defect = np.array([0, 0, 1, 2, 0])
    background = np.array([10, 1, 1, 0, 1])
    f1, threshold = best_f1_over_thresholds(defect, background)
    assert (f1, threshold) == (0.75, 0.5)
    assert best_f1_over_thresholds(np.zeros(5, int), background) == (0.0, 0.0)  # no defect pixels: F1 0


def test_segmenter_validation_reports_the_best_f1_where_the_arg_max_finds_nothing(data):
    """The arg-max over background and defect classes can stay background while P(defect) already ranks the
    defect pixels first; checkpoint selection must see that (key_metric)."""
    from inspector.train.data import ImageCache
    from inspector.train.recipe import key_metric, validate

    _, samples, classes = data
    cfg = _cfg("segmenter", val_batch=2)
    defective = [s for s in samples if s.defective][:2]
    cache = ImageCache(defective, classes, 1.0, SIZE, "gray")
    truth = torch.from_numpy(np.stack([np.pad(cache[i].label, [(0, SIZE[0] - cache[i].label.shape[0]),
                                                               (0, SIZE[1] - cache[i].label.shape[1])])
                                       for i in range(2)]) > 0)  # fmt: skip

    class Oracle(torch.nn.Module):
        """P(background) 0.6 everywhere, the rest spread over the defect classes: 0.4 / n on truth pixels."""

        def forward(self, x):
            logits = torch.zeros(x.shape[0], len(classes) + 1, *x.shape[-2:])
            logits[:, 0] = 5.0
            logits[:, 1:] += torch.where(truth[: x.shape[0]], 5.0 + np.log(0.4 / 0.6 / len(classes)), -5.0)[:, None]
            return logits

    metrics, _ = validate(Oracle(), cfg, cache, (0.5,), (0.25,), torch.device("cpu"))
    assert metrics["val_best_f1"] == 1.0 and 0.0 < metrics["val_best_threshold"] <= 0.4
    assert key_metric("segmenter") == "val_best_f1"


def test_every_task_trains_and_checkpoints_record_the_input(data, tmp_path):
    _, samples, classes = data
    for task in ("classifier", "deeplabv3plus"):
        best = train(_cfg(task, epochs=1), samples, samples[:6], classes, tmp_path / task)
        _, ckpt = load_checkpoint(best)
        assert ckpt["task"] == task
        assert ckpt["scale"] == (None if task == "classifier" else 1.0)
        assert tuple(ckpt["size"]) == ((64, 64) if task == "classifier" else SIZE)


def test_the_dense_head_is_trained_but_never_exported(data, tmp_path):
    _, samples, classes = data
    best = train(_cfg("recognizer", epochs=1, aux_weight=1.0), samples, samples[:6], classes, tmp_path)
    model, ckpt = load_checkpoint(best)
    assert ckpt["aux"] and model.aux is not None
    history = ckpt["history"]
    assert "train_dense" in history[0] and "train_block" in history[0]
    deployed, _ = deployed_from_checkpoint(best)
    frames = torch.randint(0, 256, (1, *SIZE, 1), dtype=torch.uint8)
    with torch.no_grad():
        assert deployed(frames).shape == (1, SIZE[0] // 32, SIZE[1] // 32)
    plain = train(_cfg("recognizer", epochs=1, aux_weight=0.0), samples, samples[:6], classes, tmp_path / "plain")
    assert load_checkpoint(plain)[0].aux is None


def test_the_segmenters_window_loss_is_trained_but_never_exported(data, tmp_path):
    _, samples, classes = data
    best = train(_cfg("segmenter", epochs=1, window_loss=0.5), samples, samples[:6], classes, tmp_path)
    model, ckpt = load_checkpoint(best)
    assert ckpt["aux"] and model.window_head is not None
    assert "train_window" in ckpt["history"][0] and "train_crop" in ckpt["history"][0]
    deployed, _ = deployed_from_checkpoint(best)
    frames = torch.randint(0, 256, (1, *SIZE, 1), dtype=torch.uint8)
    with torch.no_grad():
        assert deployed(frames).shape[-2:] == SIZE
    plain = train(_cfg("segmenter", epochs=1), samples, samples[:6], classes, tmp_path / "plain")
    assert load_checkpoint(plain)[0].window_head is None


def test_too_few_defective_validation_images_are_warned_about(data, tmp_path):
    _, samples, classes = data
    train(_cfg("recognizer", epochs=1), samples, samples[:4], classes, tmp_path)
    log = (tmp_path / "train.log").read_text()
    assert "defective validation images (< 20)" in log and "--select last" in log


@pytest.mark.parametrize("shape", [(250, 250), (257, 131), (128, 128), (300, 129)])
def test_segmenter_branch_crop_holds_defects_in_the_last_rows_and_columns(shape: tuple[int, int]) -> None:
    # Image sizes whose free height/width is not a multiple of the 4-pixel alignment once made this draw an
    # empty range (numpy: low >= high) for a defect in the bottom-right corner, on Magnetic Tile's segmenter.
    rng = np.random.default_rng(0)
    crop = 128
    seg = np.zeros(shape, np.uint8)
    seg[-1, -1] = 1
    for _ in range(50):
        top, left, h, w = choose_crop(seg, crop, rng, defect_bias=1.0)
        assert (h, w) == (crop, crop)
        assert top % 4 == 0 and left % 4 == 0
        assert 0 <= top <= shape[0] - crop and 0 <= left <= shape[1] - crop
        # aligned down to 4 pixels, the crop still reaches within 3 pixels of the defect
        assert top + crop >= shape[0] - 3 and left + crop >= shape[1] - 3


def test_command_line_defaults_resolve_per_task() -> None:
    # The parsers once took their defaults from a recognizer's resolved TrainConfig: `train --task segmenter`
    # got the recognizer's 320 px window as its branch crop and no defect bias; `cv` passed crop 0 (a whole
    # image for the recognizer, an empty draw for the segmenter's branch crop).
    from inspector.train.cli import build_parser, config_from_args

    parser = build_parser()
    seg = config_from_args(parser.parse_args(["train", "--data", "d", "--out", "o", "--task", "segmenter"]))
    rec = config_from_args(parser.parse_args(["train", "--data", "d", "--out", "o", "--task", "recognizer"]))
    assert (seg.crop, seg.defect_bias) == (128, 0.7)
    assert (rec.crop, rec.defect_bias) == (320, 0.0)
    cv = parser.parse_args(["cv", "--data", "d", "--out", "o"])
    assert TrainConfig(task="segmenter", crop=cv.crop).crop == 128
    assert TrainConfig(task="recognizer", crop=cv.crop).crop == 320
    with pytest.raises(ValueError, match="branch crop"):
        TrainConfig(task="segmenter", crop=0)


def test_the_cv_result_keeps_what_chose_the_checkpoint(data, tmp_path):
    """The committed result records the validation metric of the chosen epoch and the whole run's curve, so
    an ablation can be judged on validation data when the run folder is gone."""
    import json

    from inspector.train.cv import validation_record

    _, samples, classes = data
    best = train(_cfg("recognizer", epochs=4), samples, samples[:12], classes, tmp_path)
    checkpoint = torch.load(best, weights_only=False)
    record = validation_record(checkpoint, json.loads((tmp_path / "history.json").read_text()), "recognizer")
    assert record["metric"] == "val_ap"
    assert [c["epoch"] for c in record["curve"]] == [0, 1, 2, 3]  # the whole run, past the chosen epoch
    at_chosen = next(c for c in record["curve"] if c["epoch"] == record["epoch"])
    assert at_chosen["val_ap"] == record["chosen"]["val_ap"] == max(c["val_ap"] for c in record["curve"])
    assert set(at_chosen) == {"epoch", "val_ap", "val_auroc", "val_margin"}


def test_squashing_that_changes_the_aspect_ratio_is_logged(data, tmp_path):
    _, samples, classes = data
    train(_cfg("classifier", epochs=1, size=(32, 96)), samples, samples[:6], classes, tmp_path / "wide")
    log = (tmp_path / "wide" / "train.log").read_text()
    assert f"changes the aspect ratio of {len(samples)} of {len(samples)} training images" in log
    assert "up to 2.00x" in log
    train(_cfg("classifier", epochs=1, size=(64, 96)), samples, samples[:6], classes, tmp_path / "kept")
    assert "aspect ratio" not in (tmp_path / "kept" / "train.log").read_text()


def test_amp_on_the_cpu_trains_in_bfloat16_where_native_and_says_so_elsewhere(data, tmp_path):
    from inspector.train.recipe import amp_supported

    _, samples, classes = data
    train(_cfg("recognizer", epochs=1, amp=True), samples, samples[:6], classes, tmp_path)
    log = (tmp_path / "train.log").read_text()
    history = torch.load(tmp_path / "last.pt", weights_only=False)["history"]
    assert np.isfinite(history[-1]["train_loss"])
    if amp_supported(torch.device("cpu")):
        assert "bfloat16 autocast on cpu" in log
    else:
        assert "--amp ignored" in log
