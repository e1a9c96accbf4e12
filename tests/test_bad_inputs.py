"""Wrong invocations and broken inputs across the CLI: each exits non-zero with exactly one line on stderr that
names the problem and the fix, no traceback, no code run from a pickle, and no output file left behind.

docs/reliability.md lists the same table. Most rows run `resnext.cli.main(argv)` in this process (fast); the rows
marked SUBPROCESS run `python -m resnext` for real, which proves "no traceback" end to end, and DALI_MISSING runs
it with `import nvidia.dali` made to fail (DALI is installed here).
"""
from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnext import create_model
from resnext.cli import main
from resnext.data.embedded import CLASS_NAMES

from conftest import copy_subset
from faults import environment
from reliability_support import RunsCode

IN_PROCESS, SUBPROCESS, DALI_MISSING = "in-process", "subprocess", "subprocess without DALI"
TRAIN = ("--arch resnext_tiny --image-size 32 -b 8 -j 0 --epochs 1 --data-backend pytorch --no-tensorboard "
         "--no-progress --workspace ws")

# (id, command line, part of the one-line error, exit status, how it runs). Placeholders: {data} a good dataset
# (10 classes), {inputs} the broken inputs made by the `inputs` fixture, {train} the flags of a tiny training run,
# {port} a port another socket listens on, {readonly} a folder nobody may write to. Relative outputs land in the
# test's own empty folder, which must still hold no file afterwards.
CASES = [
    # train: the dataset
    ("train-missing-folder", "train {inputs}/missing {train}", "dataset folder '{inputs}/missing' does not exist",
     2, SUBPROCESS),
    ("train-empty-folder", "train {inputs}/empty {train}", "has no train/ or val/ folder", 2, IN_PROCESS),
    ("train-file-as-folder", "train {inputs}/notes.txt {train}", "is a file, not a folder", 2, IN_PROCESS),
    ("train-mismatched-classes", "train {inputs}/mismatch {train}",
     "different class folders (only in train/: coat; only in val/: dress)", 2, IN_PROCESS),
    ("train-num-classes-mismatch", "train {data} {train} --num-classes 7", "does not match the 10 class folders",
     2, IN_PROCESS),
    # train: flags
    ("train-unknown-arch", "train {data} {train} --arch resnext999", "unknown architecture 'resnext999'", 2,
     IN_PROCESS),
    ("train-zero-batch", "train {data} {train} -b 0", "-b/--batch-size: must be at least 1, got 0", 2, IN_PROCESS),
    ("train-nan-lr", "train {data} {train} --lr nan", "--lr/--learning-rate: must be a finite number, got nan", 2,
     IN_PROCESS),
    ("train-momentum-above-1", "train {data} {train} --momentum 1.5", "--momentum: must be in [0, 1), got 1.5", 2,
     IN_PROCESS),
    ("train-unknown-affinity", "train {data} {train} --gpu-affinity sockets",
     "--gpu-affinity: must be one of none, socket, socket_single", 2, IN_PROCESS),
    ("train-triangular-without-dali", "train {data} {train} --interpolation triangular",
     "--interpolation triangular exists in DALI only", 2, IN_PROCESS),
    ("train-optimizer-batch", "train {data} {train} --optimizer-batch-size 4",
     "is smaller than one batch of all processes", 2, IN_PROCESS),
    ("train-run-epochs-below-off", "train {data} {train} --run-epochs -2", "--run-epochs: must be at least 0 or -1",
     2, IN_PROCESS),
    ("train-unknown-device", "train {data} {train} --device tpu0", "is not a device name; use cpu, cuda", 2,
     IN_PROCESS),
    # train: the environment
    ("train-workspace-is-a-file", "train {data} {train} --workspace {inputs}/notes.txt", "is a file; pass a folder",
     2, IN_PROCESS),
    ("train-unwritable-workspace", "train {data} {train} --workspace {readonly}/ws",
     "is not writable", 2, IN_PROCESS),
    ("train-gpu-backend-without-gpu", "train {data} {train} --data-backend gpu --device cuda",
     "no CUDA GPU is visible; use --device cpu", 2, IN_PROCESS),
    ("train-dali-gpu-without-gpu", "train {data} {train} --data-backend dali-gpu", "needs a CUDA device", 2,
     IN_PROCESS),
    ("train-dali-missing", "train {data} {train} --data-backend dali-cpu",
     "DALI, which is not installed; install it with `pip install 'resnext[dali]'`", 2, DALI_MISSING),
    # train: weights and checkpoints
    ("train-text-file-as-checkpoint", "train {data} {train} --resume {inputs}/notes.txt",
     "cannot be read", 2, IN_PROCESS),
    ("train-malicious-pickle-checkpoint", "train {data} {train} --resume {inputs}/evil.pt",
     "refuses to load because that can run code", 2, SUBPROCESS),
    ("train-weights-of-another-arch", "train {data} {train} --pretrained-from-file {inputs}/resnet50.pt",
     "the file holds a resnet50", 2, IN_PROCESS),
    ("train-weights-of-another-class-count", "train {data} {train} --pretrained-from-file {inputs}/tiny3.pt",
     "the file's classifier has 3 classes", 2, IN_PROCESS),
    ("train-malicious-pickle-weights", "train {data} {train} --pretrained-from-file {inputs}/evil.pkl",
     "refuses to unpickle because that can run code", 2, IN_PROCESS),
    # train: class folders against the classes of the weights (matched by name)
    ("train-resume-with-a-renamed-class", "train {inputs}/renamed {train} --resume {inputs}/named10.pt",
     "class folder handbag of '{inputs}/renamed' is not among the 10 classes of checkpoint", 2, IN_PROCESS),
    ("train-resume-without-a-class", "train {inputs}/reduced {train} --resume {inputs}/named10.pt",
     "has no class folder for 1 of the 10 classes of checkpoint", 2, IN_PROCESS),
    ("train-pretrained-with-a-renamed-class",
     "train {inputs}/renamed {train} --pretrained-from-file {inputs}/named10.pt",
     "or train a new classifier for these folders with --ignore-head", 2, IN_PROCESS),
    ("train-class-map-without-weights", "train {data} {train} --class-map {inputs}/purse.json",
     "--class-map maps class folders to the classes of weights, and this run has none", 2, IN_PROCESS),
    # evaluate
    ("evaluate-missing-folder", "evaluate {inputs}/missing --weights {inputs}/tiny10.pt -j 0", "does not exist", 2,
     IN_PROCESS),
    ("evaluate-empty-folder", "evaluate {inputs}/empty --weights {inputs}/tiny10.pt -j 0", "has no class folders", 2,
     IN_PROCESS),
    ("evaluate-text-file-as-weights", "evaluate {data} --weights {inputs}/notes.txt -j 0",
     "cannot be read as PyTorch or safetensors weights", 2, IN_PROCESS),
    ("evaluate-weights-of-another-class-count", "evaluate {data} --weights {inputs}/tiny3.pt -j 0 --image-size 32",
     "the weights classify 3 classes but", 2, IN_PROCESS),
    ("evaluate-weights-of-another-arch", "evaluate {data} --weights {inputs}/tiny10.pt -j 0 --arch resnet50",
     "the file holds a resnext_tiny", 2, IN_PROCESS),
    ("evaluate-malicious-pickle", "evaluate {data} --weights {inputs}/evil.pt -j 0 --output-json out.json",
     "refuses to unpickle because that can run code", 2, SUBPROCESS),
    ("evaluate-dali-gpu-without-gpu", "evaluate {data} --weights {inputs}/tiny10.pt -j 0 --data-backend dali-gpu",
     "needs a CUDA device", 2, IN_PROCESS),
    ("evaluate-renamed-class-folder", "evaluate {inputs}/renamed --weights {inputs}/named10.pt -j 0",
     "class folder handbag of '{inputs}/renamed/val' is not among the 10 classes of the weights", 2, IN_PROCESS),
    ("evaluate-class-map-to-an-unknown-class",
     "evaluate {inputs}/renamed --weights {inputs}/named10.pt -j 0 --class-map {inputs}/purse.json",
     "--class-map maps folder handbag to 'purse', which is not a class of the weights", 2, IN_PROCESS),
    ("evaluate-class-map-not-a-map",
     "evaluate {inputs}/renamed --weights {inputs}/named10.pt -j 0 --class-map {inputs}/notes.txt",
     "line 1 of the class map '{inputs}/notes.txt' has 1 field", 2, IN_PROCESS),
    # predict
    ("predict-empty-folder", "predict {inputs}/empty --weights {inputs}/tiny10.pt", "holds no images", 2, IN_PROCESS),
    ("predict-text-file-as-weights", "predict {data}/val --weights {inputs}/notes.txt",
     "cannot be read as PyTorch or safetensors weights", 2, SUBPROCESS),
    ("predict-malicious-pickle", "predict {data}/val --weights {inputs}/evil.pkl", "refuses to unpickle", 2,
     IN_PROCESS),
    ("predict-zero-topk", "predict {data}/val --weights {inputs}/tiny10.pt --topk 0", "expected a number >= 1", 2,
     IN_PROCESS),
    ("predict-class-names-of-another-count",
     "predict {data}/val --weights {inputs}/tiny10.pt --class-names {inputs}/labels3.txt",
     "the weights classify 10 classes but --class-names '{inputs}/labels3.txt' has 3 class names", 2, IN_PROCESS),
    # export
    ("export-unknown-format", "export --weights {inputs}/tiny10.pt --format tflite --output m.tflite",
     "unknown export format 'tflite'", 2, IN_PROCESS),
    ("export-missing-weights", "export --weights {inputs}/missing.pt --format onnx --output m.onnx",
     "does not exist", 2, IN_PROCESS),
    ("export-output-under-a-file",
     "export --weights {inputs}/tiny10.pt --format onnx --output {inputs}/notes.txt/m.onnx",
     "is a file, not a folder", 2, IN_PROCESS),
    ("export-model-name-escaping-the-repository",
     "export --weights {inputs}/tiny10.pt --format triton --output repo --model-name ../escape",
     "may only hold letters, digits", 2, IN_PROCESS),
    ("export-unknown-precision", "export --weights {inputs}/tiny10.pt --format onnx --output m.onnx --precision int3",
     "unknown precision 'int3'", 2, IN_PROCESS),
    ("export-class-names-the-weights-do-not-know",
     "export --weights {inputs}/named10.pt --format safetensors --output m.safetensors --class-names {inputs}/renamed",
     "class name handbag of --class-names '{inputs}/renamed' is not among the 10 classes of the weights", 2,
     IN_PROCESS),
    # serve
    ("serve-port-in-use", "serve --weights {inputs}/tiny10.pt --http-port {port} --grpc-port 0 --metrics-port 0",
     "is in use", 2, IN_PROCESS),
    ("serve-unknown-host", "serve --weights {inputs}/tiny10.pt --host 256.1.1.1 --http-port 0 --grpc-port 0 "
     "--metrics-port 0", "is not an address of this machine", 2, IN_PROCESS),
    ("serve-malicious-pickle", "serve --weights {inputs}/evil.pt --http-port 0 --grpc-port 0 --metrics-port 0",
     "refuses to unpickle", 2, IN_PROCESS),
    ("serve-class-names-of-another-count", "serve --weights {inputs}/tiny10.pt --class-names {inputs}/labels3.txt "
     "--http-port 0 --grpc-port 0 --metrics-port 0", "the weights classify 10 classes but --class-names", 2,
     IN_PROCESS),
    # info
    ("info-unknown-arch", "info --arch nope", "unknown architecture 'nope'", 2, SUBPROCESS),
    ("info-zero-image-size", "info --image-size 0", "--image-size: expected a number >= 1, got 0", 2, IN_PROCESS),
    ("info-negative-classes", "info --num-classes -5", "expected a number >= 1, got -5", 2, IN_PROCESS),
]


@pytest.fixture(scope="module")
def inputs(embedded_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-inputs")
    (folder / "empty").mkdir()
    (folder / "notes.txt").write_text("these are not weights\n")
    image = sorted((embedded_data / "train" / "bag").iterdir())[0]
    for split, classes in (("train", ("bag", "coat")), ("val", ("bag", "dress"))):
        for name in classes:
            (folder / "mismatch" / split / name).mkdir(parents=True)
            shutil.copy(image, folder / "mismatch" / split / name / image.name)
    torch.save(create_model("resnext_tiny", 10).state_dict(), folder / "tiny10.pt")
    torch.save(create_model("resnext_tiny", 3).state_dict(), folder / "tiny3.pt")
    torch.save(create_model("resnet50", 10).state_dict(), folder / "resnet50.pt")
    torch.save({"model": RunsCode(folder / "PWNED")}, folder / "evil.pt")  # a torch zip file with a payload
    (folder / "evil.pkl").write_bytes(pickle.dumps(RunsCode(folder / "PWNED")))  # a bare pickle
    # A checkpoint that carries the embedded dataset's class names, and that dataset with 'bag' renamed / removed.
    torch.save({"format": "resnext.checkpoint", "format_version": 1, "arch": "resnext_tiny", "num_classes": 10,
                "class_names": list(CLASS_NAMES), "model": create_model("resnext_tiny", 10).state_dict()},
               folder / "named10.pt")
    for name, drop in (("renamed", False), ("reduced", True)):
        for split in ("train", "val"):
            for class_name in CLASS_NAMES:
                if class_name == "bag" and drop:
                    continue
                target = folder / name / split / ("handbag" if class_name == "bag" else class_name)
                target.mkdir(parents=True)
                shutil.copy(sorted((embedded_data / split / class_name).iterdir())[0], target)
    (folder / "purse.json").write_text('{"handbag": "purse"}')
    (folder / "labels3.txt").write_text("bag\ncoat\ndress\n")
    readonly = folder / "readonly"
    readonly.mkdir(mode=0o500)
    return folder


@pytest.fixture(scope="module")
def data(embedded_data, tmp_path_factory) -> Path:
    return copy_subset(embedded_data, tmp_path_factory.mktemp("bad-inputs-data") / "data", 2, 1)


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def unwritable_folder(inputs: Path) -> Path:
    if os.geteuid() != 0:
        return inputs / "readonly"  # mode 0500
    return Path("/proc/resnext-no-workspace-here")  # root writes through file modes; nobody creates folders in /proc


def run(argv: list[str], how: str, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `resnext ARGV`."""
    if how == IN_PROCESS:
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse exits on a bad flag
            code = stop.code
        return code, capsys.readouterr().err
    module = "faults" if how == DALI_MISSING else "resnext"
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=300,
                          env=environment({"no_dali": True} if how == DALI_MISSING else None))
    return done.returncode, done.stderr


@pytest.mark.parametrize("command, message, status, how", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input_exits_with_one_line(inputs, data, busy_port, tmp_path, monkeypatch, capsys, command, message,
                                       status, how):
    values = dict(inputs=inputs, data=data, train=TRAIN, port=busy_port, readonly=unwritable_folder(inputs))
    argv = command.format(**values).split()
    monkeypatch.chdir(tmp_path)
    code, stderr = run(argv, how, capsys)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == status, stderr[-3000:]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(f"resnext {argv[0]}: error: ") and message.format(**values) in lines[0], lines[0]
    assert not (inputs / "PWNED").exists(), "a pickle in the inputs was unpickled"
    assert not [path for path in tmp_path.rglob("*") if path.is_file()], "an output file was left behind"


def test_the_table_covers_every_command_and_is_the_one_in_the_docs():
    commands = {case[1].split()[0] for case in CASES}
    assert commands == {"train", "evaluate", "predict", "export", "serve", "info"}
    assert len(CASES) >= 25 and sum(case[4] != IN_PROCESS for case in CASES) >= 5
    docs = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    assert not [case[0] for case in CASES if f"| {case[0]} " not in docs], "docs/reliability.md misses rows"
