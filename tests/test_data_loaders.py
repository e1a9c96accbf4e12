"""Every backend that runs on a CPU, through create_loader, on real files: the data contract end to end."""
import logging
import sys

import pytest
import torch
from PIL import Image
from test_data_support import BOMB_LIMIT, make_broken_dataset, needs_dali

from resnext.data import create_loader, embedded
from resnext.data.base import Loader
from resnext.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from resnext.errors import UserError

LOW = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
HIGH = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))

# (backend, workers): the gpu backend runs its CPU decoding path here.
CPU_BACKENDS = [("pytorch", 0), ("pytorch", 2), ("gpu", 0), ("gpu", 2), pytest.param("dali-cpu", 2, marks=needs_dali),
                ("synthetic", 0)]


def check_batch(images, labels, batch_size, image_size, memory_format, num_classes):
    assert images.shape == (batch_size, 3, image_size, image_size)
    assert images.dtype == torch.float32 and images.device.type == "cpu"
    assert images.is_contiguous(memory_format=memory_format)
    assert LOW - 1e-4 <= float(images.min()) and float(images.max()) <= HIGH + 1e-4
    assert labels.shape == (batch_size,) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) < num_classes


@pytest.mark.parametrize("backend, workers", CPU_BACKENDS)
def test_backend_honours_the_contract(embedded_data, backend, workers):
    memory_format = torch.channels_last if workers else torch.contiguous_format
    options = dict(image_size=32, workers=workers, device="cpu", memory_format=memory_format,
                   num_classes=10 if backend == "synthetic" else None, synthetic_batches_per_epoch=5)
    train = create_loader(backend, embedded_data, train=True, batch_size=64, **options)
    assert isinstance(train, Loader)  # the typed protocol training and evaluation are written against
    assert train.class_names == (list(embedded.CLASS_NAMES) if backend != "synthetic" else
                                 [f"class_{i}" for i in range(10)])
    assert train.skipped == []
    if backend != "synthetic":
        assert train.dataset_size == 3000 and len(train) == 3000 // 64
    train.set_epoch(1)
    batches = 0
    for images, labels in train:
        check_batch(images, labels, 64, 32, memory_format, 10)
        batches += 1
        if batches == 4:
            break
    if backend == "synthetic":
        assert len(train) == 5 and train.dataset_size == 320
        train.set_epoch(0, start_batch=3)
        assert sum(1 for _ in train) == 2
        return
    val = create_loader(backend, embedded_data, train=False, batch_size=128, **options)
    assert len(val) == 8 and val.dataset_size == 1000
    seen = torch.zeros(10, dtype=torch.int64)
    for images, labels in val:
        check_batch(images, labels, len(labels), 32, memory_format, 10)
        seen += torch.bincount(labels, minlength=10)
    assert seen.tolist() == [100] * 10  # every validation image exactly once


@pytest.mark.parametrize("backend", ["pytorch", "gpu"])
def test_resume_mid_epoch_yields_identical_batches(embedded_data, backend):
    """Order and augmentation depend on (seed, epoch, sample) only: not on workers, not on where we resumed."""
    def loader(workers, augmentation=None):
        return create_loader(backend, embedded_data / "train", train=True, batch_size=32, image_size=24,
                             workers=workers, device="cpu", seed=3, augmentation=augmentation)

    first = loader(0, "autoaugment" if backend == "pytorch" else None)
    first.set_epoch(2)
    full = [batch for _, batch in zip(range(6), first)]
    resumed = loader(2, "autoaugment" if backend == "pytorch" else None)
    resumed.set_epoch(2, start_batch=3)
    for expected, got in zip(full[3:], resumed):
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    first.set_epoch(3)
    assert not torch.equal(next(iter(first))[0], full[0][0])  # a new epoch reshuffles and re-augments


def test_pytorch_and_gpu_backends_give_the_same_pixels(embedded_data):
    """The two backends share the crop/resize code: on the CPU their batches are identical, train and eval, with
    the gpu backend's per-sample path (the batched one is compared with it in test_data_fast_paths.py)."""
    for train in (True, False):
        pytorch, gpu = (create_loader(b, embedded_data, train=train, batch_size=100, image_size=40, workers=0,
                                      device="cpu", **({"gpu_batched": False} if b == "gpu" else {}))
                        for b in ("pytorch", "gpu"))
        for (a, la), (b, lb) in zip([next(iter(pytorch))], [next(iter(gpu))]):
            assert torch.equal(la, lb) and torch.equal(a, b)


def test_two_ranks_get_disjoint_shards_and_share_validation(embedded_data):
    def loader(rank, train):
        return create_loader("pytorch", embedded_data, train=train, batch_size=50, image_size=16, workers=0,
                             device="cpu", rank=rank, world_size=2, seed=1)

    shards = []
    for rank in (0, 1):
        train = loader(rank, True)
        train.set_epoch(4)
        assert len(train) == 1500 // 50
        shards.append(set(train.batch_sampler.epoch_indices().tolist()))
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 3000
    counts = torch.zeros(10, dtype=torch.int64)
    for rank in (0, 1):
        images = 0
        for _, labels in loader(rank, False):
            counts += torch.bincount(labels, minlength=10)
            images += len(labels)
        assert images == 500
    assert counts.tolist() == [100] * 10


@pytest.mark.parametrize("backend, workers", [("pytorch", 0), ("pytorch", 2), ("gpu", 2),
                                              pytest.param("dali-cpu", 1, marks=needs_dali)])
def test_broken_files_are_skipped_reported_and_never_stop_an_epoch(tmp_path, monkeypatch, caplog, backend, workers):
    broken = make_broken_dataset(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    if backend == "dali-cpu":  # DALI has no pixel limit: the "bomb" (12,000 pixels) is a fine image to it
        broken.pop("bomb.png")
    caplog.set_level(logging.WARNING, logger="resnext.data")
    train = create_loader(backend, tmp_path, train=True, batch_size=4, image_size=16, workers=workers, device="cpu")
    for epoch in (0, 1):
        train.set_epoch(epoch)
        batches = [labels for images, labels in train if images.shape == (4, 3, 16, 16)]
        assert len(batches) == len(train) == (6 + 5 + 5 + 1 + 8) // 4  # good, other formats, broken, notes, b
    expected = {str(tmp_path / "train" / "a" / name) for name in broken} | {str(tmp_path / "train" / "a" / "notes.txt")}
    assert {path for path, _ in train.skipped} == expected
    for path in expected:  # logged once per file, although every epoch met it
        assert sum(path in record.getMessage() for record in caplog.records) == 1
    val = create_loader(backend, tmp_path, train=False, batch_size=4, image_size=16, workers=workers, device="cpu")
    images = sum(len(labels) for _, labels in val)
    assert images == 6 + 5 + 8 + (1 if backend == "dali-cpu" else 0)  # broken validation images are left out
    assert len(val.skipped) == len(broken) + 1


def test_a_damaged_dataset_is_one_clear_error(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(40):
            (tmp_path / split / "a" / f"{i}.jpg").write_bytes(b"")
    loader = create_loader("pytorch", tmp_path, train=True, batch_size=4, image_size=16, workers=0, device="cpu")
    with pytest.raises(UserError, match="dataset looks damaged"):
        next(iter(loader))


def test_create_loader_rejects_bad_requests_in_one_sentence(embedded_data, monkeypatch):
    def error(**options):
        arguments = dict(backend="pytorch", root=embedded_data, image_size=16, workers=0, device="cpu")
        arguments.update(options)
        with pytest.raises(UserError) as info:
            create_loader(**arguments)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "did you mean 'dali-cpu'" in error(backend="dali_cpu")
    assert "needs a CUDA device" in error(backend="dali-gpu")
    assert "fewer than one batch" in error(batch_size=4000)
    assert "num_classes is 1000" in error(num_classes=1000)
    assert "give its path" in error(root=None)
    assert "batch_size" in error(batch_size=0)
    assert "rank must be" in error(rank=2, world_size=2)
    assert "autoaugment" in error(backend="dali-cpu", augmentation="autoaugment")
    assert "interpolation" in error(interpolation="nearest")
    assert "does not exist" in error(root=embedded_data / "nope")
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if DALI were not installed
    assert "pip install 'resnext[dali]'" in error(backend="dali-cpu")
