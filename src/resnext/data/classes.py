"""Which label each class folder gets when data meets weights: by the class's name, never by position alone.

A model's output i means the class its training data called class_names[i]; our checkpoints and safetensors
exports carry that list. Sorting the folders of another copy of the data does not recover it: a renamed, added
or missing folder shifts every label after it, and top-1 then measures the shift. So wherever a dataset meets
weights (train --resume / --pretrained-from-file, train --evaluate, evaluate, and --class-names of predict,
export and serve), `match_classes` gives each class folder the label of its name, with these rules:

1. An explicit map from the user (`--class-map FILE`: {"folder": "class name" or class index}) is applied
   first; a folder it does not mention keeps its own name.
2. Weights with class names: a folder gets the index of the class of the same name. A folder the weights do
   not know is refused with one line naming it. A subset of the classes is fine for evaluation (each folder is
   scored against its own class); continuing training (--resume) needs every class of the checkpoint.
3. ImageNet-1k: weights whose classes are ImageNet-1k's (torchvision's class names, which the public weights
   get, or 1,000 classes without names) and folders named by WordNet synset (n01440764, ImageNet's own layout)
   are matched through the synset list: the i-th synset in sorted order is class i (ILSVRC2012's class index).
4. Weights without class names: the folders in sorted order are the classes in order (torchvision
   ImageFolder's rule, all that is left), and their count must equal the weights' class count.
"""
from __future__ import annotations

import csv
import functools
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import UserError, listed

IMAGENET_CLASSES = 1000
MAP_HINT = 'map {} with --class-map FILE (a JSON object {{"folder": "class name or index"}})'


@dataclass(frozen=True)
class ClassLabels:
    """The label of every class folder, and the names of the labels.

    class_names: the label space, label i is class_names[i] (the weights' classes; the folders when no
        weights are involved). class_to_idx: class folder name -> label (several folders may share a label).
    matched_by: how the labels were found: "folder order", "name", "synset", "class map" or "position".
    """

    class_names: tuple[str, ...]
    class_to_idx: Mapping[str, int] = field(default_factory=dict)
    matched_by: str = "folder order"

    @classmethod
    def from_folders(cls, folders: Sequence[str]) -> "ClassLabels":
        """Sorted (or given) folder names numbered from 0: the labels of a dataset on its own."""
        return cls(tuple(folders), {name: index for index, name in enumerate(folders)})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels_used(self) -> list[int]:
        """The labels some folder has, in increasing order."""
        return sorted(set(self.class_to_idx.values()))


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1,000 WordNet IDs of ImageNet-1k in class-index order (sorted: ILSVRC2012's folder order)."""
    text = resources.files("resnext").joinpath("assets/imagenet_synsets.txt").read_text(encoding="ascii")
    return tuple(text.split())


def _is_imagenet(names: Sequence[str] | None, num_classes: int) -> bool:
    if num_classes != IMAGENET_CLASSES:
        return False
    if names is None:
        return True  # a 1,000-class model without names is taken for ImageNet-1k, as predict does
    from ..weights import imagenet_class_names

    return list(names) == imagenet_class_names()


def _plural(items: Sequence, one: str, many: str) -> str:
    return one if len(items) == 1 else many


def match_classes(folders: Sequence[str], weights_classes: Sequence[str] | None = None,
                  num_classes: int | None = None, *, class_map: Mapping[str, str | int] | None = None,
                  subset: bool = True, data: str = "the data", weights: str = "the weights",
                  what: str = "class folder") -> ClassLabels:
    """The label of each class folder for weights with `weights_classes` (their names in output order, or None)
    and `num_classes` outputs; the rules are in this module's docstring.

    folders: the class folder names (sorted, as find_classes returns them; for rule 4 their order is the
        label order). class_map: the user's {folder: class name or index}, applied first.
    subset: whether folders may cover only some of the classes (evaluation); False requires them all.
    data, weights: how messages name the two sides ("'DATA/val'", "checkpoint 'ckpt.pth'"); what: what the
        data's entries are ("class folder"; "class name" for a list of names).
    Raises UserError (one line) for a folder the weights do not know, a name two classes share, a map entry
    naming no class, a missing class when subset is False, and for weights without names a folder count
    other than num_classes. Without weights (both None) the folders are numbered in order.
    """
    folders = list(folders)
    if weights_classes is not None:
        weights_classes = [str(name) for name in weights_classes]
        num_classes = num_classes or len(weights_classes)
        if len(weights_classes) != num_classes:
            weights_classes = None  # names that do not fit the classifier are not its names
    if num_classes is None:
        if class_map:
            raise UserError("--class-map maps class folders to the classes of weights, and this run has none; drop "
                            "it, or pass the weights (--resume or --pretrained-from-file).")
        return ClassLabels.from_folders(folders)

    labels: dict[str, int] = {}
    class_map = dict(class_map or {})
    for folder in folders:
        if folder in class_map:
            labels[folder] = _mapped_label(folder, class_map[folder], weights_classes, num_classes, weights)
    rest = [folder for folder in folders if folder not in labels]
    imagenet = _is_imagenet(weights_classes, num_classes)
    names = list(weights_classes) if weights_classes is not None else None
    matched_by = "class map" if labels else "name"

    known = set(weights_classes or ())
    if rest and imagenet and all(folder in _synset_index() for folder in rest) and not known.intersection(rest):
        labels.update({folder: _synset_index()[folder] for folder in rest})
        matched_by = "synset"
        if names is None:
            from ..weights import imagenet_class_names

            names = imagenet_class_names()
    elif rest and weights_classes is not None:
        index: dict[str, int] = {}
        shared: set[str] = set()
        for position, name in enumerate(weights_classes):
            if name in index:
                shared.add(name)
            index.setdefault(name, position)
        unknown = [folder for folder in rest if folder not in index]
        if unknown:
            are = _plural(unknown, "is", "are")
            it = _plural(unknown, "it", "them")
            fix = (f"rename {it} to the weights' class names, or {MAP_HINT.format(it)}"
                   if what == "class folder" else "use the names of the classes the weights were trained on")
            raise UserError(f"{what}{_plural(unknown, '', 's')} {listed(unknown, 6)} of {data} {are} not among the "
                            f"{num_classes} classes of {weights} ({listed(weights_classes, 6)}); {fix}.")
        ambiguous = [folder for folder in rest if folder in shared]
        if ambiguous:
            folder = ambiguous[0]
            positions = [str(i) for i, name in enumerate(weights_classes) if name == folder]
            raise UserError(f"{what} {folder} of {data} matches {len(positions)} classes of {weights} with that "
                            f"name (indices {', '.join(positions)}); pick one with --class-map FILE "
                            f'(e.g. {{"{folder}": {positions[0]}}}).')
        labels.update({folder: index[folder] for folder in rest})
    elif rest:
        if labels:
            raise UserError(f"{weights} carry no class names, so --class-map must give every {what} of {data} "
                            f"a class index; it leaves out {listed(rest, 6)}.")
        if len(folders) != num_classes:
            fix = ("use the dataset they were trained on (the same class folders), or map the folders to class "
                   "indices with --class-map FILE" if what == "class folder" else
                   "give one name per class, in class order")
            raise UserError(f"{weights} classify {num_classes} classes but {data} has {len(folders)} {what}s, and "
                            f"the weights carry no class names to match them by; {fix}.")
        labels = {folder: position for position, folder in enumerate(folders)}
        matched_by = "position"
        names = list(folders)
    if names is None:  # unnamed weights, every folder mapped to an index by the user
        by_label: dict[int, str] = {}
        for folder, label in labels.items():
            by_label.setdefault(label, folder)
        names = [by_label.get(label, f"class_{label}") for label in range(num_classes)]

    if not subset:
        missing = [names[label] for label in range(num_classes) if label not in set(labels.values())]
        if missing:
            raise UserError(f"{data} has no {what} for {len(missing)} of the {num_classes} classes of {weights} "
                            f"({listed(missing, 6)}); continue on the classes the checkpoint was trained on (or "
                            f"{MAP_HINT.format('the folders')}), or start a new run from its weights with "
                            "--pretrained-from-file.")
    return ClassLabels(tuple(names), labels, matched_by)


@functools.lru_cache(maxsize=1)
def _synset_index() -> dict[str, int]:
    return {synset: index for index, synset in enumerate(imagenet_synsets())}


def _mapped_label(folder: str, target: str | int, weights_classes: list[str] | None, num_classes: int,
                  weights: str) -> int:
    if isinstance(target, int) and not isinstance(target, bool):
        if 0 <= target < num_classes:
            return target
        raise UserError(f"--class-map maps folder {folder} to class index {target}, but {weights} have classes "
                        f"0 to {num_classes - 1}.")
    if weights_classes is None:
        raise UserError(f"--class-map maps folder {folder} to '{target}', but {weights} carry no class names; map it "
                        "to a class index (a number) instead.")
    positions = [i for i, name in enumerate(weights_classes) if name == target]
    if len(positions) == 1:
        return positions[0]
    if positions:
        raise UserError(f"--class-map maps folder {folder} to '{target}', which {len(positions)} classes of {weights} "
                        f"are called (indices {', '.join(map(str, positions))}); map it to one index instead.")
    raise UserError(f"--class-map maps folder {folder} to '{target}', which is not a class of {weights} "
                    f"({listed(weights_classes, 6)}).")


def read_class_map(path: str | os.PathLike) -> dict[str, str | int]:
    """A --class-map file: a JSON object {"folder": "class name" or class index}, or (any other extension) CSV
    rows `folder,class` (a header row `folder,class` is allowed). UserError naming the file when it is wrong."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read the class map '{path}' ({err.strerror or err}).") from None
    except UnicodeDecodeError:
        raise UserError(f"the class map '{path}' is not UTF-8 text; write it as JSON or CSV.") from None
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except ValueError as err:
            raise UserError(f"the class map '{path}' is not valid JSON ({err}).") from None
        if not isinstance(mapping, dict) or not all(
                isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
                for value in mapping.values()):
            raise UserError(f'the class map \'{path}\' must be one JSON object {{"folder": "class name" or index}}.')
        return {str(key): value for key, value in mapping.items()}
    mapping: dict[str, str | int] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise UserError(f"line {number} of the class map '{path}' has {len(row)} "
                            f"field{'' if len(row) == 1 else 's'}; each line is `folder,class` (or write a .json file).")
        folder, target = (value.strip() for value in row)
        if number == 1 and (folder, target) == ("folder", "class"):
            continue
        mapping[folder] = target
    if not mapping:
        raise UserError(f"the class map '{path}' maps no folder; write `folder,class` lines or a JSON object.")
    return mapping


def read_class_names(source: str | os.PathLike) -> list[str]:
    """Class names from a labels file (one per line, in class-index order, as Triton's labels.txt) or from a
    dataset or split folder (its class folders, sorted). UserError when there is neither."""
    from .folder import find_classes, find_dataset, is_dataset_root

    path = Path(source).expanduser()
    if path.is_dir():
        return find_dataset(path)[2] if is_dataset_root(path) else find_classes(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"--class-names '{path}' does not exist; give a labels file (one name per line) or a dataset "
                        "folder.") from None
    except OSError as err:
        raise UserError(f"cannot read --class-names '{path}' ({err.strerror or err}).") from None
    except UnicodeDecodeError:
        raise UserError(f"--class-names '{path}' is not a text file; give a labels file (one name per line) or a "
                        "dataset folder.") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise UserError(f"--class-names '{path}' holds no names; write one class name per line.")
    return names


def classes_for_training(folders: Sequence[str], *, data: str, checkpoint: Mapping | None = None,
                         checkpoint_path: str | os.PathLike | None = None, pretrained=None,
                         class_map: str | os.PathLike | Mapping | None = None, evaluate: bool = False,
                         ignore_head: bool = False) -> ClassLabels:
    """The labels of a training run's class folders (sorted, as find_dataset returns them).

    checkpoint: the --resume checkpoint dict: every folder gets its class's index by name, and every class of
        the checkpoint needs a folder (a subset only for --evaluate).
    pretrained: --pretrained-from-file weights (resnext.weights.read_weights): when their classifier is loaded
        (as many classes as folders, or --evaluate), by name as well; with ignore_head, a classifier whose class
        names differ from the folders' is dropped from `pretrained` (left as initialised, fine-tuning) instead.
    Without either, the folders in sorted order. class_map: the --class-map file or {folder: class}.
    """
    if isinstance(class_map, (str, os.PathLike)):
        class_map = read_class_map(class_map)
    if checkpoint is not None:
        return match_classes(folders, checkpoint.get("class_names"), checkpoint.get("num_classes"),
                             class_map=class_map, subset=evaluate, data=data,
                             weights=f"checkpoint '{checkpoint_path}'" if checkpoint_path else "the checkpoint")
    if pretrained is None:
        return match_classes(folders, class_map=class_map, data=data)
    head = pretrained.state.get("fc.weight")
    outputs = int(head.shape[0]) if head is not None else None
    names = pretrained.meta.get("class_names")
    weights = f"the weights '{pretrained.path}'" if pretrained.path else "the pretrained weights"
    if outputs is None or (outputs != len(folders) and not evaluate):
        # No classifier to match, or one of another size: --ignore-head trains a new one, and without it
        # load_weights says that the classifier does not fit.
        return match_classes(folders, class_map=class_map, data=data)
    try:
        return match_classes(folders, names, outputs, class_map=class_map, subset=evaluate, data=data,
                             weights=weights)
    except UserError as err:
        if not ignore_head or evaluate:
            hint = "" if evaluate else "; or train a new classifier for these folders with --ignore-head"
            raise UserError(f"{str(err).rstrip('.')}{hint}.") from None
    pretrained.state = {key: value for key, value in pretrained.state.items() if not key.startswith("fc.")}
    pretrained.meta["head_note"] = "a classifier for other classes (by name) than the dataset's folders"
    return match_classes(folders, class_map=None, data=data)
