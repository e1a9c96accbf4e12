"""Class identity by name: wherever a dataset meets weights, each class folder gets the label of its name.

The weights of the shared training run (inference_support: bag, sneaker, trouser) against renamed and reduced
copies of its validation folder, through every command that meets data and weights, and the labels of every
loader backend given such a mapping.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from inference_support import assert_user_error, single_thread, trained  # noqa: F401  (fixtures)
from test_data_support import needs_dali

from resnext.checkpoint import read_checkpoint
from resnext.cli import main
from resnext.data import ClassLabels, create_loader, match_classes
from resnext.data.classes import imagenet_synsets, read_class_map
from resnext.data.embedded import CLASS_NAMES
from resnext.errors import UserError
from resnext.recipe import TrainConfig
from resnext.training import train
from resnext.weights import imagenet_class_names

TRAINED_CLASSES = ["bag", "sneaker", "trouser"]


def evaluate_json(capsys, *argv) -> dict:
    assert main(["evaluate", *map(str, argv), "--json", "-j", "0"]) == 0
    return json.loads(capsys.readouterr().out)


def renamed_copy(source: Path, dest: Path, renames: dict[str, str], drop: tuple[str, ...] = ()) -> Path:
    """A copy of a dataset root (or split folder) with class folders renamed in train/ and val/, some dropped."""
    shutil.copytree(source, dest)
    for split in [dest / "train", dest / "val"] if (dest / "val").is_dir() else [dest]:
        for old, new in renames.items():
            (split / old).rename(split / new)
        for name in drop:
            shutil.rmtree(split / name)
    return dest


# ---- the rule -----------------------------------------------------------------------------------------------

def test_folders_get_the_weights_index_of_their_name():
    labels = match_classes(["sneaker", "trouser"], TRAINED_CLASSES)
    assert labels.class_to_idx == {"sneaker": 1, "trouser": 2} and labels.class_names == tuple(TRAINED_CLASSES)
    assert labels.labels_used == [1, 2] and labels.matched_by == "name"
    with pytest.raises(UserError, match=r"class folder handbag of the data is not among the 3 classes of the weights "
                                        r"\(bag, sneaker, trouser\); rename it .* --class-map FILE"):
        match_classes(["handbag", "sneaker", "trouser"], TRAINED_CLASSES)
    mapped = match_classes(["handbag", "sneaker", "trouser"], TRAINED_CLASSES, class_map={"handbag": "bag"})
    assert mapped.class_to_idx == {"handbag": 0, "sneaker": 1, "trouser": 2}
    assert match_classes(["tote"], TRAINED_CLASSES, class_map={"tote": 0}).class_to_idx == {"tote": 0}
    with pytest.raises(UserError, match="no class folder for 1 of the 3 classes .* \\(bag\\)"):
        match_classes(["sneaker", "trouser"], TRAINED_CLASSES, subset=False)
    with pytest.raises(UserError, match="'purse', which is not a class of the weights"):
        match_classes(["handbag"], TRAINED_CLASSES, class_map={"handbag": "purse"})
    with pytest.raises(UserError, match="class index 7, but the weights have classes 0 to 2"):
        match_classes(["handbag"], TRAINED_CLASSES, class_map={"handbag": 7})


def test_weights_without_names_take_the_folders_in_order_and_their_count():
    assert match_classes(["b", "a"], None, 2).class_to_idx == {"b": 0, "a": 1}
    assert match_classes(["b", "a"], None, 2).matched_by == "position"
    with pytest.raises(UserError, match="the weights classify 3 classes but the data has 2 class folders, and the "
                                        "weights carry no class names"):
        match_classes(["a", "b"], None, 3)
    assert match_classes(["a", "b"]).class_to_idx == {"a": 0, "b": 1}  # no weights: the folders in order


def test_imagenet_synset_folders_match_imagenet_classes_even_as_a_subset():
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and list(synsets) == sorted(synsets) and synsets[0] == "n01440764"
    folders = [synsets[1], synsets[417], synsets[999]]  # goldfish, balloon, toilet tissue
    for names in (imagenet_class_names(), None):  # public weights get torchvision's names; or no names at all
        labels = match_classes(folders, names, 1000)
        assert labels.class_to_idx == {folders[0]: 1, folders[1]: 417, folders[2]: 999}
        assert labels.matched_by == "synset" and labels.class_names[1] == "goldfish"
    # ImageNet's names themselves also match; a name two classes share must be picked by index.
    assert match_classes(["crane bird"], imagenet_class_names()).class_to_idx == {"crane bird": 134}
    with pytest.raises(UserError,
                       match=r"crane of the data matches 2 classes of the weights with that name \(indices 0, 2\)"):
        match_classes(["crane"], ["crane", "heron", "crane"])
    assert match_classes(["crane"], ["crane", "heron", "crane"], class_map={"crane": 2}).class_to_idx == {"crane": 2}


def test_class_map_files(tmp_path):
    (tmp_path / "map.json").write_text('{"handbag": "bag", "tote": 0}')
    assert read_class_map(tmp_path / "map.json") == {"handbag": "bag", "tote": 0}
    (tmp_path / "map.csv").write_text("folder,class\nhandbag,bag\n\n")
    assert read_class_map(tmp_path / "map.csv") == {"handbag": "bag"}
    (tmp_path / "bad.json").write_text('["handbag"]')
    with pytest.raises(UserError, match="must be one JSON object"):
        read_class_map(tmp_path / "bad.json")
    (tmp_path / "bad.csv").write_text("handbag,bag,extra\n")
    with pytest.raises(UserError, match="line 1 of the class map .* has 3 fields"):
        read_class_map(tmp_path / "bad.csv")


# ---- every backend labels by the mapping -------------------------------------------------------------------

def _loader_labels(backend: str, split: Path, classes: ClassLabels) -> tuple[list[int], list[str]]:
    loader = create_loader(backend, split, train=False, batch_size=64, image_size=16, workers=0, device="cpu",
                           classes=classes)
    return [int(label) for _, labels in loader for label in labels], loader.class_names


@pytest.mark.parametrize("backend", ["pytorch", "gpu", pytest.param("dali-cpu", marks=needs_dali)])
def test_every_backend_labels_a_subset_by_the_weights_index(backend, embedded_data, tmp_path):
    split = tmp_path / "val"
    for name in ("coat", "trouser"):  # 2 of the 10 classes, each image labelled with its class's index among 10
        shutil.copytree(embedded_data / "val" / name, split / name)
    classes = match_classes(["coat", "trouser"], CLASS_NAMES)
    labels, names = _loader_labels(backend, split, classes)
    assert names == list(CLASS_NAMES)
    assert labels == [CLASS_NAMES.index("coat")] * 100 + [CLASS_NAMES.index("trouser")] * 100


def test_synthetic_backend_takes_the_class_count_of_the_mapping():
    classes = ClassLabels(("a", "b", "c"), {"a": 0})
    loader = create_loader("synthetic", train=False, batch_size=32, image_size=8, device="cpu", classes=classes,
                           synthetic_batches_per_epoch=1)
    assert {int(label) for _, labels in loader for label in labels} <= {0, 1, 2}


# ---- evaluate -----------------------------------------------------------------------------------------------

def test_evaluate_refuses_a_renamed_folder_and_maps_it_when_asked(trained, tmp_path, capsys):
    reference = evaluate_json(capsys, trained.val, "--weights", trained.best)
    # 'tote' sorts between sneaker and trouser: by folder order every label would shift.
    data = renamed_copy(trained.val, tmp_path / "val", {"bag": "tote"})
    assert_user_error(capsys, "evaluate", [data, "--weights", trained.best, "-j", "0"],
                      "class folder tote of '" + str(data) + "' is not among the 3 classes of the weights (bag, "
                      "sneaker, trouser); rename it")
    (tmp_path / "map.json").write_text(json.dumps({"tote": "bag"}))
    mapped = evaluate_json(capsys, data, "--weights", trained.best, "--class-map", tmp_path / "map.json")
    assert mapped["top1"] == reference["top1"] and mapped["top5"] == reference["top5"]
    assert mapped["per_class"] == reference["per_class"]
    assert mapped["class_to_idx"] == {"sneaker": 1, "tote": 0, "trouser": 2}


def test_evaluate_scores_a_subset_of_the_classes_by_name(trained, tmp_path, capsys):
    full = evaluate_json(capsys, trained.val, "--weights", trained.best)
    subset = renamed_copy(trained.val, tmp_path / "val", {}, drop=("bag",))
    result = evaluate_json(capsys, subset, "--weights", trained.best)
    assert result["images"] == 32 and result["class_names"] == TRAINED_CLASSES
    assert result["per_class"] == [item for item in full["per_class"] if item["name"] != "bag"]
    assert result["top1"] == pytest.approx(sum(item["top1"] for item in full["per_class"][1:]) / 2)
    assert [sum(row) for row in result["confusion"]] == [0, 16, 16]
    assert main(["evaluate", str(subset), "--weights", str(trained.best), "-j", "0"]) == 0
    assert "2 of the weights' 3 classes evaluated" in capsys.readouterr().out


# ---- train: --resume, --pretrained-from-file, --evaluate ----------------------------------------------------

def tiny_args(data: Path, workspace: Path, *extra) -> list[str]:
    return ["train", str(data), "--preset", "resnext", "--arch", "resnext_tiny", "--image-size", "32", "-b", "16",
            "-j", "0", "--no-tensorboard", "--no-progress", "--print-freq", "100", "--workspace", str(workspace),
            *map(str, extra)]


def test_resume_refuses_renamed_classes_and_keeps_the_checkpoints_list(trained, tmp_path, capsys):
    data = renamed_copy(trained.data, tmp_path / "data", {"bag": "tote"})
    resume = trained.checkpoints[0]
    assert main(tiny_args(data, tmp_path / "ws", "--epochs", "3", "--resume", resume)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"class folder tote of '{data}' is not among the 3 classes of checkpoint" in err[0]
    assert not (tmp_path / "ws" / "checkpoint.pth.tar").exists()
    (tmp_path / "map.csv").write_text("tote,bag\n")
    assert main(tiny_args(data, tmp_path / "ws", "--epochs", "3", "--run-epochs", "1", "--resume", resume,
                          "--class-map", tmp_path / "map.csv")) == 0
    assert read_checkpoint(tmp_path / "ws" / "checkpoint.pth.tar")["class_names"] == TRAINED_CLASSES
    reduced = renamed_copy(trained.data, tmp_path / "reduced", {}, drop=("bag",))
    assert main(tiny_args(reduced, tmp_path / "ws2", "--epochs", "3", "--resume", resume)) == 2
    assert "has no class folder for 1 of the 3 classes of checkpoint" in capsys.readouterr().err


def test_pretrained_weights_match_by_name_or_train_a_new_head(trained, tmp_path, capsys):
    data = renamed_copy(trained.data, tmp_path / "data", {"bag": "tote"})
    assert main(tiny_args(data, tmp_path / "a", "--epochs", "1", "--pretrained-from-file", trained.best)) == 2
    assert "or train a new classifier for these folders with --ignore-head" in capsys.readouterr().err
    # --ignore-head: the classifier of other classes is left as initialised; the backbone still loads.
    config = TrainConfig(data=str(data), arch="resnext_tiny", image_size=32, batch_size=16, workers=0, epochs=1,
                         prof=1, pretrained_from_file=str(trained.best), ignore_head=True, tensorboard=False,
                         progress=False, workspace=str(tmp_path / "b"), save_checkpoints=True)
    train(config)
    saved = read_checkpoint(tmp_path / "b" / "checkpoint.pth.tar")
    assert saved["class_names"] == ["sneaker", "tote", "trouser"]  # the dataset's own, as a fresh head
    # A class map instead keeps the trained head, and the weights' class order.
    (tmp_path / "map.json").write_text('{"tote": "bag"}')
    assert main(tiny_args(data, tmp_path / "c", "--epochs", "1", "--prof", "1", "--pretrained-from-file",
                          trained.best, "--class-map", tmp_path / "map.json")) == 0
    assert read_checkpoint(tmp_path / "c" / "checkpoint.pth.tar")["class_names"] == TRAINED_CLASSES


def test_train_evaluate_mode_scores_a_subset_like_evaluate(trained, tmp_path, capsys):
    subset = renamed_copy(trained.data, tmp_path / "data", {}, drop=("trouser",))
    expected = evaluate_json(capsys, subset / "val", "--weights", trained.checkpoints[-1])
    assert main(tiny_args(subset, tmp_path / "ws", "--evaluate", "--resume", trained.checkpoints[-1])) == 0
    captured = capsys.readouterr()
    line = [entry for entry in (tmp_path / "ws" / "experiment_raport.json").read_text().splitlines()
            if '"EVALUATE"' in entry]
    logged = json.loads(line[0][5:])["data"]
    assert logged["val.top1"] == pytest.approx(expected["top1"]) and logged["val.images"] == 32
    assert "not bit-exactly" not in captured.err  # --evaluate resumes nothing


# ---- predict, export, serve: --class-names ------------------------------------------------------------------

def test_class_names_name_unnamed_weights_and_check_named_ones(trained, tmp_path, capsys):
    bare = tmp_path / "bare.pt"
    torch.save(read_checkpoint(trained.best)["model"], bare)  # a state_dict: no names travel with it
    image = sorted((trained.val / "trouser").iterdir())[0]
    assert main(["predict", str(image), "--weights", str(bare), "--topk", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"][0].startswith("class_")
    assert main(["predict", str(image), "--weights", str(bare), "--topk", "1", "--json", "--image-size", "32",
                 "--class-names", str(trained.data)]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["trouser"]
    (tmp_path / "labels.txt").write_text("bag\nsneaker\n")
    assert_user_error(capsys, "export", ["--weights", bare, "--format", "safetensors", "--output",
                                         tmp_path / "m.safetensors", "--class-names", tmp_path / "labels.txt"],
                      "the weights classify 3 classes but --class-names '" + str(tmp_path / "labels.txt")
                      + "' has 2 class names, and the weights carry no class names")
    renamed = renamed_copy(trained.val, tmp_path / "val", {"bag": "tote"})
    assert_user_error(capsys, "predict", [image, "--weights", trained.best, "--class-names", renamed],
                      f"class name tote of --class-names '{renamed}' is not among the 3 classes of the weights")
    assert main(["export", "--weights", str(bare), "--format", "safetensors", "--output",
                 str(tmp_path / "named.safetensors"), "--class-names", str(trained.val)]) == 0
    capsys.readouterr()
    assert evaluate_json(capsys, trained.val, "--weights", tmp_path / "named.safetensors")["class_names"] == \
        TRAINED_CLASSES
