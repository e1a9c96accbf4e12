"""Dataset layout validation, the file list of a split, and the epoch plan (shuffle, shards, seeds)."""
import shutil

import numpy as np
import pytest
from test_data_support import write_good_images

from resnext.data import ImageFolder, find_dataset, walk_images
from resnext.data.folder import HIDDEN, NOT_AN_IMAGE, OUTSIDE_CLASS_FOLDER, SEEN_BEFORE
from resnext.data.sampling import ShardBatchSampler, sample_seeds, shard_indices
from resnext.errors import UserError


def make_layout(root, train=("cat", "dog"), val=("cat", "dog"), images=2):
    for split, classes in (("train", train), ("val", val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for name in classes:
            write_good_images(root / split / name, images)
    return root


def test_find_dataset_returns_splits_and_sorted_classes(tmp_path):
    root = make_layout(tmp_path / "data", train=("zebra", "ant", "Bee"), val=("zebra", "ant", "Bee"))
    train_dir, val_dir, classes = find_dataset(root)
    assert (train_dir, val_dir) == (root / "train", root / "val")
    assert classes == ["Bee", "ant", "zebra"]  # plain sorted order: the same label numbers everywhere


def _mismatched(root):
    make_layout(root, train=("cat", "dog", "fox"), val=("cat", "owl"))


def _empty_class(root):
    make_layout(root)
    for image in (root / "val" / "dog").iterdir():
        image.unlink()
    (root / "val" / "dog" / "readme.txt").write_text("not an image")


def _no_val(root):
    make_layout(root)
    shutil.rmtree(root / "val")


def _no_classes(root):
    make_layout(root, train=(), val=())
    write_good_images(root / "train", 2)  # images straight in train/


@pytest.mark.parametrize("build, expected", [
    (lambda root: None, "does not exist"),
    (lambda root: root.write_text("x"), "is a file, not a folder"),
    (_no_val, "has no val/ folder"),
    (lambda root: (root / "elsewhere").mkdir(parents=True), "has no train/ or val/ folder"),
    (_mismatched, "only in train/: dog, fox; only in val/: owl"),
    (_empty_class, "class folder dog in"),
    (_no_classes, "has no class folders (it holds 2 images directly)"),
])
def test_layout_errors_are_one_clear_sentence(tmp_path, build, expected):
    root = tmp_path / "data"
    build(root)
    with pytest.raises(UserError) as info:
        find_dataset(root)
    message = str(info.value)
    assert expected in message and "\n" not in message and message.endswith("."), message


def test_image_folder_lists_images_and_reports_other_files(tmp_path):
    write_good_images(tmp_path / "b", 2)
    write_good_images(tmp_path / "a", 3)
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "a" / "upper.JPEG").write_bytes((tmp_path / "a" / "good_00.jpg").read_bytes())
    (tmp_path / ".hidden_class").mkdir()
    folder = ImageFolder(tmp_path)
    assert folder.class_names == ["a", "b"] and len(folder) == 6
    assert folder.class_counts() == {"a": 4, "b": 2}
    assert [folder.label(i) for i in range(6)] == [0, 0, 0, 0, 1, 1]
    assert folder.path(3) == str(tmp_path / "a" / "upper.JPEG")
    assert folder.ignored == [(str(tmp_path / "a" / "notes.txt"), "not an image file extension")]


def nested_dataset(root) -> dict[str, int]:
    """train/ and val/ whose class folders hold images at several depths (photos sorted into batches, as users
    and NVIDIA's own scripts meet them), plus what must be left out; returns the images per class of train/."""
    for split in ("train", "val"):
        write_good_images(root / split / "bag", 2)
        write_good_images(root / split / "bag" / "batch1", 3, seed=10)
        write_good_images(root / split / "bag" / "batch1" / "deeper", 1, seed=20)
        write_good_images(root / split / "bag" / "batch1-extra", 1, seed=30)  # sorts before batch1/ as a path
        write_good_images(root / split / "coat" / "only_in_a_sub_folder", 2, seed=40)
    return {"bag": 7, "coat": 2}


def test_images_below_class_folders_are_found_as_torchvision_imagefolder_finds_them(tmp_path):
    from torchvision.datasets import ImageFolder as TorchvisionImageFolder

    counts = nested_dataset(tmp_path)
    ours = ImageFolder(tmp_path / "train")
    theirs = TorchvisionImageFolder(str(tmp_path / "train"))
    assert ours.class_counts() == counts and len(ours) == len(theirs) == 9
    assert [(ours.path(i), ours.label(i)) for i in range(len(ours))] == theirs.samples  # same files, same order
    assert find_dataset(tmp_path)[2] == ["bag", "coat"]  # a class with images only in a sub-folder is not empty


def test_walk_leaves_out_hidden_names_and_link_loops_and_says_why(tmp_path):
    nested_dataset(tmp_path)
    bag = tmp_path / "train" / "bag"
    write_good_images(bag / ".ipynb_checkpoints", 1)
    (bag / "batch1" / "._good_00.jpg").write_bytes(b"AppleDouble")
    (bag / "batch1" / "loop").symlink_to(bag, target_is_directory=True)
    (bag / "batch1" / "labels.csv").write_text("x")
    (tmp_path / "train" / "README.txt").write_text("x")
    images, left_out = walk_images(bag)
    assert walk_images(f"{bag}/")[0] == images  # a trailing slash, as shells complete folder names
    assert len(images) == 7 and images[0] == "good_00.jpg" and "batch1/deeper/good_00.jpg" in images
    assert sorted(left_out) == sorted([(str(bag / ".ipynb_checkpoints"), HIDDEN),
                                       (str(bag / "batch1" / "loop"), SEEN_BEFORE),
                                       (str(bag / "batch1" / "._good_00.jpg"), HIDDEN),
                                       (str(bag / "batch1" / "labels.csv"), NOT_AN_IMAGE)])
    folder = ImageFolder(tmp_path / "train")
    assert len(folder) == 9
    assert (str(tmp_path / "train" / "README.txt"), OUTSIDE_CLASS_FOLDER) in folder.ignored
    assert all(reason != HIDDEN for _, reason in folder.ignored)  # loaders do not warn about .DS_Store & co


def test_training_shards_are_disjoint_and_reshuffled_every_epoch():
    n, world = 103, 4
    for epoch in (0, 1):
        shards = [shard_indices(n, train=True, seed=7, epoch=epoch, rank=r, world_size=world) for r in range(world)]
        assert all(len(s) == n // world for s in shards)
        together = np.concatenate(shards)
        assert len(set(together.tolist())) == len(together) == (n // world) * world
    e0 = shard_indices(n, train=True, seed=7, epoch=0, rank=0, world_size=world)
    e1 = shard_indices(n, train=True, seed=7, epoch=1, rank=0, world_size=world)
    assert not np.array_equal(e0, e1)
    assert np.array_equal(e0, shard_indices(n, train=True, seed=7, epoch=0, rank=0, world_size=world))


def test_validation_shards_cover_every_image_once():
    n, world = 103, 4
    shards = [shard_indices(n, train=False, seed=7, epoch=3, rank=r, world_size=world) for r in range(world)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    assert [len(s) for s in shards] == [26, 26, 26, 25]


ORDER_SEED0_EPOCH0 = [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]


def test_batch_sampler_resumes_without_reading_skipped_batches():
    sampler = ShardBatchSampler(50, 8, train=True, drop_last=True, seed=1, rank=0, world_size=1)
    assert len(sampler) == 6
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start_batch=4)
    assert list(sampler) == full[4:] and len(sampler) == 6
    assert all(len(batch) == 8 for batch in full)
    with pytest.raises(ValueError):
        sampler.set_epoch(2, start_batch=7)
    val = ShardBatchSampler(50, 8, train=False, drop_last=False, seed=1, rank=0, world_size=1)
    assert len(val) == 7 and [len(b) for b in val][-1] == 2


def test_order_and_seeds_are_pinned():
    """Order and seeds are part of the checkpoint contract: a resumed run reads and crops as the original did."""
    order = shard_indices(10, train=True, seed=0, epoch=0, rank=0, world_size=1)
    assert order.tolist() == ORDER_SEED0_EPOCH0
    seeds = sample_seeds(0, 0, np.arange(3))
    assert seeds.dtype == np.uint64 and len(set(seeds.tolist())) == 3
    assert seeds.tolist() == sample_seeds(0, 0, np.arange(3)).tolist()
    assert seeds.tolist() == [2558736989570252433, 3400964856525257824, 12865742008072950574]
    assert sample_seeds(0, 1, np.arange(3)).tolist() != seeds.tolist()
    assert sample_seeds(1, 0, np.arange(3)).tolist() != seeds.tolist()
