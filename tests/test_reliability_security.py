"""Security: nothing unpickles untrusted data, `serve` listens on 127.0.0.1 unless told otherwise, and file names
from datasets or weights never take an output outside the folder it was asked for.

The bad-input table (test_bad_inputs.py) also feeds malicious pickles to every command; here the static side
(every call in the source that could deserialize) and the library functions.
"""
from __future__ import annotations

import ast
import csv
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from resnext import create_model, load_model, load_weights
from resnext.checkpoint import find_resume_checkpoint, read_checkpoint
from resnext.cli import main
from resnext.errors import UserError

from reliability_support import RunsCode

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "src" / "resnext").rglob("*.py"), ROOT / "hubconf.py", *(ROOT / "scripts").glob("*.py")])

# Modules whose loaders run code from the bytes they read.
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}
# What may be touched on `pickle`: its error types, to turn a refused file into a UserError.
PICKLE_ERRORS = {"UnpicklingError", "PicklingError"}
# Object collectives pickle between the ranks of one job (trusted peers); nowhere else.
OBJECT_COLLECTIVES = {"gather_object", "all_gather_object", "broadcast_object_list", "scatter_object_list",
                      "send_object_list", "recv_object_list"}


def dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return dotted(node.func) + "()"
    return "?"


def keyword(call: ast.Call, name: str):
    value = next((k.value for k in call.keywords if k.arg == name), None)
    return value.value if isinstance(value, ast.Constant) else value


def unsafe_deserialization(path: Path) -> list[str]:
    """Every place in `path` that could deserialize untrusted bytes into code, as 'file:line: what'."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def flag(node, what):
        found.append(f"{path.name}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNSAFE_MODULES - {"pickle"}:
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            flag(node, f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pickle" \
                and node.attr not in PICKLE_ERRORS:
            flag(node, f"pickle.{node.attr}")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name == "torch.load" and keyword(node, "weights_only") is not True:
                flag(node, "torch.load without weights_only=True")
            elif name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy") \
                    and keyword(node, "allow_pickle") not in (None, False):
                flag(node, f"{name} with allow_pickle")
            elif name in ("torch.jit.load", "torch.export.load", "torch.package.PackageImporter") and not (
                    node.args and dotted(node.args[0]).endswith("BytesIO()")):
                flag(node, f"{name} of something other than bytes this process just wrote")
            elif name.endswith(("add_safe_globals", "safe_globals")) and \
                    {dotted(e) for arg in node.args for e in getattr(arg, "elts", [arg])} != {"argparse.Namespace"}:
                flag(node, f"{name} allows more than argparse.Namespace")
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                flag(node, name)
            elif name.split(".")[-1] in OBJECT_COLLECTIVES and path.name != "distributed.py":
                flag(node, f"{name} outside distributed.py")
    return found


def test_no_code_path_can_unpickle_untrusted_data():
    assert len(SOURCES) > 20
    found = [line for path in SOURCES for line in unsafe_deserialization(path)]
    assert not found, "\n".join(found)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The scanner itself: each pattern it must refuse is refused (so an empty result above means something)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle, dill\nimport torch, numpy as np\nfrom marshal import loads\n"
                   "pickle.loads(b'')\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
                   "np.load('x', allow_pickle=True)\ntorch.jit.load('model.pt')\n"
                   "torch.serialization.add_safe_globals([os.system])\ndist.gather_object(1, [])\n")
    found = unsafe_deserialization(bad)
    assert len(found) == 9, found


# ---- malicious files through the library ---------------------------------------------------------------------

def malicious_files(folder: Path) -> dict[str, Path]:
    """The same payload in the three forms a weights file can take: torch zip, legacy torch file, bare pickle."""
    payload = {"format": "resnext.checkpoint", "model": RunsCode(folder / "PWNED")}
    files = {"zip": folder / "checkpoint-0000-00000009.pt", "legacy": folder / "legacy.pth",
             "pickle": folder / "weights.pkl"}
    torch.save(payload, files["zip"])
    torch.save(payload, files["legacy"], _use_new_zipfile_serialization=False)
    files["pickle"].write_bytes(pickle.dumps(payload))
    return files


LOADERS = {
    "read_checkpoint": lambda path: read_checkpoint(path),
    "load_weights": lambda path: load_weights(create_model("resnext_tiny", 10), path),
    "load_model": lambda path: load_model(path),
}


@pytest.mark.parametrize("form", ["zip", "legacy", "pickle"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_malicious_weights_are_refused_without_running_them(tmp_path, loader, form):
    path = malicious_files(tmp_path)[form]
    with pytest.raises(UserError, match="refuses to|cannot be read"):
        LOADERS[loader](path)
    assert not (tmp_path / "PWNED").exists()


def test_resume_auto_passes_over_a_malicious_checkpoint(tmp_path, caplog):
    malicious_files(tmp_path)
    assert find_resume_checkpoint(tmp_path) is None
    assert "skipping unreadable checkpoint" in caplog.text
    assert "refuses to load because that can run code" in caplog.text
    assert not (tmp_path / "PWNED").exists()


# ---- serve listens on this machine only unless told -----------------------------------------------------------

class FakeTriton:
    """Stands in for PyTriton: records the server configuration; it has none of its model classes, so binding the
    models fails and serve reports that the server did not start (no server is needed for this test)."""

    configs: list[dict] = []

    def __init__(self):
        self.TritonConfig = lambda **options: FakeTriton.configs.append(options) or options
        self.Triton = lambda config: self

    def stop(self):
        pass


@pytest.mark.parametrize("host_args, expected", [([], "127.0.0.1"), (["--host", "0.0.0.0"], "0.0.0.0")])
def test_serve_listens_on_localhost_unless_told_otherwise(tmp_path, monkeypatch, capsys, host_args, expected):
    from resnext import serve

    weights = tmp_path / "tiny.pt"
    torch.save(create_model("resnext_tiny", 3).state_dict(), weights)
    FakeTriton.configs.clear()
    monkeypatch.setattr(serve, "_import_pytriton", FakeTriton)
    monkeypatch.setenv("LD_LIBRARY_PATH", os.environ.get("LD_LIBRARY_PATH", ""))
    code = main(["serve", "--weights", str(weights), *host_args, "--http-port", "0", "--grpc-port", "0",
                 "--metrics-port", "0", "--log-file", str(tmp_path / "triton.log")])
    assert code == 2 and "the Triton server did not start" in capsys.readouterr().err
    (config,) = FakeTriton.configs
    assert config["http_address"] == config["grpc_address"] == config["metrics_address"] == expected


# ---- names from data never take an output elsewhere -----------------------------------------------------------

HOSTILE_NAMES = ["../../escaped", "a/b\\c", "line\nbreak", "..", "/etc/passwd"]


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def test_class_names_from_weights_stay_inside_the_triton_repository(tmp_path, monkeypatch):
    from resnext.export import export_model

    weights = tmp_path / "inputs" / "hostile.pt"
    weights.parent.mkdir()
    state = {"format": "resnext.checkpoint", "format_version": 1, "arch": "resnext_tiny",
             "num_classes": len(HOSTILE_NAMES), "class_names": HOSTILE_NAMES,
             "model": create_model("resnext_tiny", len(HOSTILE_NAMES)).state_dict()}
    torch.save(state, weights)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = files_under(tmp_path)
    export_model(weights, "triton", "repository", image_size=32)
    written = files_under(tmp_path) - before
    assert written and all(path.is_relative_to(work / "repository" / "resnext") for path in written), written
    labels = (work / "repository" / "resnext" / "labels.txt").read_text().splitlines()
    assert len(labels) == len(HOSTILE_NAMES)  # one line per class: a name with a line break cannot shift labels


def test_hostile_image_file_names_come_back_verbatim_and_nothing_is_written(embedded_data, tmp_path, monkeypatch,
                                                                            capsys):
    source = sorted((embedded_data / "val" / "bag").iterdir())[0]
    images = tmp_path / "images"
    images.mkdir()
    names = ["line\nbreak.png", 'quote",comma.png', "-rf.png", "tab\tand space.png", "ünïcode ✓.png"]
    for name in names:
        shutil.copy(source, images / name)
    weights = tmp_path / "tiny.pt"
    torch.save(create_model("resnext_tiny", 3).state_dict(), weights)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = files_under(tmp_path)
    assert main(["predict", str(images), "--weights", str(weights), "--image-size", "32", "--csv", "--topk", "1"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(row["path"] for row in rows) == sorted(str(images / name) for name in names)
    assert main(["predict", str(images), "--weights", str(weights), "--image-size", "32", "--json", "--topk", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(json.loads(line)["path"] for line in lines) == sorted(str(images / name) for name in names)
    assert files_under(tmp_path) == before
