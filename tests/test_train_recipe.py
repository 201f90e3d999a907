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
from inspector.train.recipe import PairDataset, TrainConfig, deployed_from_checkpoint, load_checkpoint, train

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
        size=SIZE,
        epochs=8,
        batch=4,
        lr=1e-3,
        lr_schedule="constant",
        workers=0,
        threads=1,
        augment=AugmentConfig(enabled=False),
        crop=32,
        plots=False,
    )
    return TrainConfig(**{**base, **kw})


def test_pairs_are_balanced_and_each_defective_image_has_a_genuine_partner(data):
    _, samples, classes = data
    defective = [s for s in samples if s.defective]
    good = [s for s in samples if not s.defective]
    dataset = PairDataset(defective, good, classes, _cfg("recognizer", augment=AugmentConfig()), "gray")
    partners_by_epoch = []
    total_pos = total_neg = 0
    for epoch in range(2):
        dataset.epoch = epoch
        partners = []
        for i in range(len(dataset)):
            item = dataset[i]
            assert item["defective"].tolist() == [True, False]
            assert item["source"][0] == i
            partners.append(int(item["source"][1]))
            blocks, select = item["blocks"], item["select"]
            assert not blocks[1].any()  # the partner is genuine
            pos, neg = int(select[0].sum()), int(select[1].sum())
            assert pos == neg == int(blocks[0].sum())  # all defective blocks, as many normal ones
            assert (blocks[0][select[0]] == 1).all()
            total_pos, total_neg = total_pos + pos, total_neg + neg
        partners_by_epoch.append(partners)
    assert total_pos == total_neg > 0
    assert partners_by_epoch[0] != partners_by_epoch[1]  # partners are drawn anew each epoch
    assert len(set(partners_by_epoch[0] + partners_by_epoch[1])) > len(good) // 3
    dataset.epoch = 0
    a, b = dataset[3], dataset[3]
    assert all(np.array_equal(a[k], b[k]) for k in a)  # an item depends on (seed, epoch, index) only


def test_cap_on_blocks_per_image(data):
    _, samples, classes = data
    defective = [s for s in samples if s.defective]
    good = [s for s in samples if not s.defective]
    dataset = PairDataset(defective, good, classes, _cfg("recognizer", blocks_per_image=1), "gray")
    for i in range(len(dataset)):
        select = dataset[i]["select"]
        assert select[0].sum() == select[1].sum() <= 1


def test_normal_blocks_from_the_defective_image_keep_the_balance():
    from inspector.train.recipe import balanced_selection

    defective = np.zeros((7, 7), np.uint8)
    defective[2:4, 2:4] = 1  # 4 defective blocks
    good = np.zeros((7, 7), np.uint8)
    rng = np.random.default_rng(0)
    select = balanced_selection(defective, good, rng, normal_from_defective=0.5)
    assert (select[0] & (defective == 1)).sum() == 4  # every defective block
    own_normal = (select[0] & (defective == 0)).sum()
    assert own_normal == 2 and select[1].sum() == 2  # 4 normal blocks: half from each image
    select = balanced_selection(defective, good, rng)  # the paper: all normal blocks from the genuine image
    assert select[0].sum() == 4 and select[1].sum() == 4
    with pytest.raises(ValueError):
        balanced_selection(defective, defective, rng)


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
        "--workers",
        "0",
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


def test_auroc_hand_computed():
    from inspector.train.recipe import auroc

    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs won 3 of 4 -> 0.75; a tie counts half
    assert auroc(np.array([0.9, 0.4, 0.5, 0.1]), np.array([1, 1, 0, 0])) == 0.75
    assert auroc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert np.isnan(auroc(np.array([0.5]), np.array([1])))


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
    from torch.utils.data import DataLoader

    from inspector.train.recipe import EvalDataset, collate_plain, key_metric, validate

    _, samples, classes = data
    cfg = _cfg("segmenter")
    defective = [s for s in samples if s.defective][:2]
    loader = DataLoader(EvalDataset(defective, classes, cfg, "gray"), batch_size=2, collate_fn=collate_plain)

    class Oracle(torch.nn.Module):
        """P(background) 0.6 everywhere, the rest spread over the defect classes: 0.4 / n on truth pixels."""

        def forward(self, x):
            truth = next(iter(loader))["seg"] > 0
            logits = torch.zeros(x.shape[0], len(classes) + 1, *x.shape[-2:])
            logits[:, 0] = 5.0
            logits[:, 1:] += torch.where(truth, 5.0 + np.log(0.4 / 0.6 / len(classes)), -5.0)[:, None]
            return logits

    metrics, _ = validate(Oracle(), "segmenter", loader, (0.5,), (0.25,), torch.device("cpu"))
    assert metrics["val_f1"] == 0.0  # nothing wins the arg-max
    assert metrics["val_best_f1"] == 1.0 and 0.0 < metrics["val_best_threshold"] <= 0.4
    assert key_metric("segmenter") == "val_best_f1"


def test_batches_do_not_depend_on_the_worker_count(data):
    """Augmentation, partners and blocks are seeded per item, so worker processes change nothing."""
    from torch.utils.data import DataLoader

    from inspector.train.recipe import collate_pairs

    _, samples, classes = data
    defective = [s for s in samples if s.defective]
    good = [s for s in samples if not s.defective]
    dataset = PairDataset(defective, good, classes, _cfg("segmenter", augment=AugmentConfig()), "gray")
    dataset.epoch = 1
    batches = [
        next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_pairs, num_workers=workers)))
        for workers in (0, 2)
    ]
    for key in batches[0]:
        assert torch.equal(batches[0][key], batches[1][key]), key
