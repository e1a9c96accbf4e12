"""resnext report: reading DLLogger logs (resumed, partial, damaged) and the HTML page + PNG figures built from them.

Expected numbers are taken from the log files with the small reader below, never from resnext.report itself.
"""
from __future__ import annotations

import base64
import datetime
import json
import logging
import math
import random
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from optional import needs_matplotlib

from resnext.cli import main
from resnext.errors import UserError
from resnext.report import (CONFUSION_SIZE, FIGURE_SIZE, LOG_NAME, read_log, run_summary, write_evaluation_report,
                            write_report)
from resnext.report.figures import smooth

ITERATIONS_PER_EPOCH = 8
EPOCHS = 3


# ---- a log writer that follows docs/ARCHITECTURE.md "Training log" to the letter -------------------------------

class LogWriter:
    def __init__(self, path: Path):
        self.path = path
        self.clock = 1764140000.0
        self.elapsed = 0.0

    def write(self, step, data) -> None:
        moment = datetime.datetime.fromtimestamp(self.clock, datetime.timezone.utc)
        record = {"timestamp": f"{self.clock:.3f}", "datetime": moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                  "elapsedtime": round(self.elapsed, 3), "type": "LOG", "step": step, "data": data}
        self.raw("DLLL " + json.dumps(record) + "\n")

    def raw(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(text)

    def tick(self, seconds: float) -> None:
        self.clock += seconds
        self.elapsed += seconds

    def start(self, **parameters) -> None:
        """A (re)start of `resnext train`: elapsed time restarts, arguments are logged again."""
        self.elapsed = 0.0
        self.write("PARAMETER", parameters)
        self.raw("DLLL " + json.dumps({"timestamp": f"{self.clock:.3f}", "type": "METADATA", "metric": "train.loss",
                                       "metadata": {"unit": None, "format": ":>5.5f"}}) + "\n")


def simulate_training(writer: LogWriter, *, precision="amp", lr=0.256, ema=False, data_bound=False, seed=0,
                      resume=None, stop=None, preempted=False, history=None):
    """Write one session of a training run: per-iteration entries, epoch ends with validation, the summary.

    resume=(epoch, step) starts from a checkpoint; stop=(epoch, step) ends the session after that step, with a
    "preempted" summary when `preempted`, else with none (killed). `history` (epoch -> epoch-end data) carries
    earlier sessions' epochs into the summary.
    """
    rng = random.Random(seed)
    history = {} if history is None else history
    total_steps = EPOCHS * ITERATIONS_PER_EPOCH
    parameters = {"arch": "resnext101_32x4d", "num_classes": 10, "precision": precision, "lr": lr,
                  "epochs": EPOCHS, "batch_size": 16, "iterations_per_epoch": ITERATIONS_PER_EPOCH, "world_size": 1,
                  "global_batch_size": 16, "torch_version": "2.4.0", "device_name": "cpu",
                  "use_ema": 0.999 if ema else None, "workspace": "runs/x"}
    writer.start(**parameters)
    start_epoch, start_step = resume or (0, 0)
    if resume:
        writer.write("RESUME", {"resume.epoch": start_epoch, "resume.step_in_epoch": start_step,
                                "resume.global_step": start_epoch * ITERATIONS_PER_EPOCH + start_step,
                                "resume.checkpoint": f"runs/x/checkpoint-{start_epoch:04d}.pt"})
    for epoch in range(start_epoch, EPOCHS):
        train = []
        for step in range(start_step + 1 if epoch == start_epoch else 1, ITERATIONS_PER_EPOCH + 1):
            if stop is not None and (epoch, step) > stop:
                if preempted:
                    write_summary(writer, history, "preempted")
                return
            done = epoch * ITERATIONS_PER_EPOCH + step
            compute_ips = 100.0 + rng.uniform(-5, 5)
            total_ips = compute_ips * (0.5 if data_bound else 0.97)
            data = {"train.loss": 5.0 * math.exp(-done / 10) + 1.0 + rng.uniform(0, 0.3),
                    "train.lr": lr * 0.5 * (1 + math.cos(math.pi * done / total_steps)),
                    "train.compute_ips": compute_ips, "train.total_ips": total_ips,
                    "train.compute_time": 16 / compute_ips, "train.data_time": 16 / total_ips - 16 / compute_ips}
            if precision == "amp":
                data["train.grad_scale"] = 2.0 ** (7 + done // 10 % 4)  # grows, then backs off after an overflow
            writer.tick(16 / total_ips)
            writer.write([epoch, step], data)
            train.append(data)
        start_step = 0
        means = {key: sum(d[key] for d in train) / len(train)
                 for key in ("train.loss", "train.total_ips", "train.compute_ips", "train.data_time",
                             "train.compute_time")}
        writer.write([epoch], {**means, "train.lr": train[-1]["train.lr"], "train.epoch_time": writer.elapsed})
        history[epoch] = dict(means)
        top1 = 10.0 + 20.0 * epoch + rng.uniform(0, 5)
        val = {"val.top1": top1, "val.top5": min(100.0, top1 + 30.0), "val.loss": 3.0 - 0.5 * epoch,
               "val.compute_ips": 300.0, "val.total_ips": 250.0, "val.compute_latency": 0.05,
               "val.compute_latency_at95": 0.06, "val.compute_latency_at99": 0.07, "val.compute_latency_at100": 0.08}
        if ema:
            val.update({"val_ema.top1": top1 + 1.0, "val_ema.top5": min(100.0, top1 + 31.0), "val_ema.loss": 2.9})
        writer.tick(2.0)
        writer.write([epoch], val)
        history[epoch].update(val)
    write_summary(writer, history, "completed")


def write_summary(writer: LogWriter, history: dict, exit_reason: str) -> None:
    epochs = [history[epoch] for epoch in sorted(history)]
    best = max(sorted(history), key=lambda e: history[e]["val.top1"])
    writer.write([], {"best.top1": history[best]["val.top1"], "best.top5": history[best]["val.top5"],
                      "best.epoch": best, "run.time": writer.elapsed,
                      "train.total_ips": sum(v["train.total_ips"] for v in epochs) / len(epochs),
                      "val.top1": epochs[-1]["val.top1"], "exit.reason": exit_reason})


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory, embedded_data) -> dict[str, Path]:
    """Workspaces of real short CPU training runs (resnext_tiny, 32 px, 8 steps an epoch, 3 epochs), by name:
    "amp" (fp16 autocast with its loss scale, EMA), "tf32" (another LR), "resumed" (a session that got 6 steps
    into epoch 1, then lost its newest checkpoints, resumed from epoch 1 step 3: those steps are logged twice)
    and "partial" (the start of the amp log, cut in the middle of a line: a run still writing).
    Every expectation in the tests is read from these files.
    """
    from conftest import copy_subset
    from resnext.checkpoint import list_checkpoints
    from resnext.recipe import TrainConfig, preset
    from resnext.training import train

    root = tmp_path_factory.mktemp("runs")
    data = copy_subset(embedded_data, root / "data", 13, 4)  # 130 training images: 8 batches of 16
    runs = {name: root / name for name in ("amp", "tf32", "resumed", "partial")}

    def run(name: str, **changes) -> None:
        values = dict(preset("resnext"), preset="resnext", data=str(data), workspace=str(runs[name]),
                      arch="resnext_tiny", image_size=32, batch_size=16,
                      workers=0, epochs=EPOCHS, warmup=1, print_freq=1, tensorboard=False, progress=False, seed=1)
        train(TrainConfig(**{**values, **changes}))

    run("amp", precision="amp", use_ema=0.9)
    run("tf32", precision="tf32", lr=0.02)
    run("resumed", run_steps=ITERATIONS_PER_EPOCH + 6, checkpoint_interval=1, gather_checkpoints=-1)
    for path in list_checkpoints(runs["resumed"]):
        if int(path.stem.split("-")[2]) > ITERATIONS_PER_EPOCH + 3:
            path.unlink()  # as if the job had died before those writes reached the disk
    run("resumed", resume="auto", gather_checkpoints=-1)
    lines = (runs["amp"] / LOG_NAME).read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"PARAMETER"' in line) + 1 + ITERATIONS_PER_EPOCH // 2
    runs["partial"].mkdir()
    (runs["partial"] / LOG_NAME).write_text("".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2])
    return runs


@pytest.fixture(scope="module")
def data_bound_run(tmp_path_factory) -> Path:
    """A log whose total img/s is half its compute img/s (a loader too slow for the GPU), in the documented
    format: a CPU test run cannot be made data-bound on purpose."""
    folder = tmp_path_factory.mktemp("data_bound")
    simulate_training(LogWriter(folder / LOG_NAME), precision="tf32", lr=0.128, data_bound=True, seed=2)
    return folder


# ---- reading the log and the page independently of resnext.report ----------------------------------------------

def logged(path: Path) -> list[tuple[object, dict]]:
    """(step, data) of the valid LOG lines, in file order."""
    entries = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line.removeprefix("DLLL "))
        except ValueError:
            continue
        if record.get("type") == "LOG":
            entries.append((record["step"], record["data"]))
    return entries


def last_written(path: Path) -> dict:
    """step (as a tuple, or the string) -> data, later lines overriding earlier ones key by key."""
    merged: dict = {}
    for step, data in logged(path):
        key = tuple(step) if isinstance(step, list) else step
        merged.setdefault(key, {}).update(data)
    return merged


class PageParser(HTMLParser):
    """Tables (id -> data-key -> [(data-value, text)]), figure images and notes of a report page."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, dict[str, list]] = {}
        self.images: dict[str, bytes] = {}
        self.headers: dict[str, list[str]] = {}
        self.notes: list[str] = []
        self._table = self._row = self._cell = self._figure = None
        self._in_note = False
        self._in_header = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = {}
            self.headers[self._table] = []
        elif tag == "thead":
            self._in_header = True
        elif tag == "tr" and self._table and "data-key" in attrs:
            self._row = self.tables[self._table].setdefault(attrs["data-key"], [])
        elif tag == "td" and self._row is not None:
            self._cell = [attrs.get("data-value"), ""]
        elif tag == "th" and self._in_header:
            self.headers[self._table].append("")
        elif tag == "figure":
            self._figure = attrs["id"]
        elif tag == "img" and self._figure:
            self.images[self._figure] = base64.b64decode(attrs["src"].split(",", 1)[1])
            assert (int(attrs["width"]), int(attrs["height"])) == png_dimensions(self.images[self._figure])
        elif tag == "p" and "note" in (attrs.get("class") or ""):
            self._in_note = True
            self.notes.append("")

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append(tuple(self._cell))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "thead":
            self._in_header = False
        elif tag == "table":
            self._table = None
        elif tag == "figure":
            self._figure = None
        elif tag == "p":
            self._in_note = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data
        elif self._in_header and self._table:
            self.headers[self._table][-1] += data
        if self._in_note:
            self.notes[-1] += data


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def png_dimensions(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def summary_value(page: PageParser, key: str, column: int = 0):
    """(exact value from data-value, text shown) of one cell of the summary table."""
    raw, text = page.tables["summary"][key][column]
    try:
        return json.loads(raw), text
    except (TypeError, ValueError):  # no value, or a plain string
        return raw, text


def check_figures(page: PageParser, folder: Path, expected: set[str]) -> None:
    assert set(page.images) == {f"fig-{name}" for name in expected}
    for name in expected:
        data = (folder / f"{name}.png").read_bytes()
        assert len(data) > 5000, name  # drawn, not blank
        assert data == page.images[f"fig-{name}"]
        assert png_dimensions(data) == (CONFUSION_SIZE if name == "confusion_matrix" else FIGURE_SIZE)


TRAINING_FIGURES = {"train_loss", "val_accuracy", "val_loss", "learning_rate", "loss_scale", "throughput"}


def check_summary_against_log(page: PageParser, log: Path, column: int = 0) -> None:
    """The page's numbers of a finished run are the values of the log's end-of-run and epoch entries."""
    entries = last_written(log)
    final = entries[()]
    assert summary_value(page, "status", column)[0] == final["exit.reason"]
    for key in ("best.top1", "best.top5"):
        value, text = summary_value(page, key, column)
        assert value == final[key] and text == f"{final[key]:.2f}"
    # Epochs as the console counts them (from 1); data-value keeps the log's 0-based number.
    assert summary_value(page, "best.epoch", column) == (final["best.epoch"], str(final["best.epoch"] + 1))
    epochs = {step[0]: data for step, data in entries.items() if isinstance(step, tuple) and len(step) == 1}
    assert final["best.top5"] == epochs[final["best.epoch"]]["val.top5"]  # top-5 at the best top-1 epoch
    best_top5 = max(data["val.top5"] for data in epochs.values())
    first = min(epoch for epoch, data in epochs.items() if data["val.top5"] == best_top5)
    assert summary_value(page, "best_top5.top5", column)[0] == best_top5
    assert summary_value(page, "best_top5.epoch", column) == (first, str(first + 1))
    assert summary_value(page, "wall_time", column)[0] == sum(session_times(log))
    assert summary_value(page, "train.total_ips", column)[0] == final["train.total_ips"]
    last_epoch = max(step[0] for step in entries if isinstance(step, tuple) and len(step) == 1)
    assert summary_value(page, "last.val.top1", column)[0] == entries[(last_epoch,)]["val.top1"]
    assert summary_value(page, "epochs_finished", column)[0] == last_epoch + 1


# ---- reports ----------------------------------------------------------------------------------------------------

@needs_matplotlib
def test_single_run_report(training_runs):
    run = training_runs["amp"]
    index = write_report([run])
    assert index == run / "report" / "index.html"
    page = parse_page(index)
    check_summary_against_log(page, run / LOG_NAME)
    check_figures(page, run / "report", TRAINING_FIGURES)
    entries = last_written(run / LOG_NAME)
    ema_top1 = {k[0]: v["val_ema.top1"] for k, v in entries.items() if isinstance(k, tuple) and len(k) == 1
                and "val_ema.top1" in v}
    best_top1 = max(ema_top1.values())
    assert summary_value(page, "best_ema.top1")[0] == best_top1
    assert summary_value(page, "best_ema.epoch")[0] == min(e for e, top1 in ema_top1.items() if top1 == best_top1)
    assert page.tables["configuration"]["precision"] == [(None, "amp")]
    assert not any("in progress" in note for note in page.notes)
    assert not list((run / "report").glob(".*tmp"))  # atomic writes left no temporary files


@needs_matplotlib
def test_two_runs_overlaid(training_runs, tmp_path):
    amp, tf32 = training_runs["amp"], training_runs["tf32"]
    with pytest.raises(UserError, match="--output"):
        write_report([amp, tf32])
    page = parse_page(write_report([amp, tf32], tmp_path / "compare"))
    assert page.headers["summary"][1:] == ["amp", "tf32"]
    check_summary_against_log(page, amp / LOG_NAME, column=0)
    check_summary_against_log(page, tf32 / LOG_NAME, column=1)
    check_figures(page, tmp_path / "compare", TRAINING_FIGURES)
    html = (tmp_path / "compare" / "index.html").read_text()
    assert '<tr class="differs" data-key="precision">' in html and 'class="differs" data-key="arch"' not in html


@needs_matplotlib
def test_data_bound_run_is_flagged(training_runs, data_bound_run, tmp_path):
    page = parse_page(write_report([training_runs["amp"], data_bound_run], tmp_path / "compare"))
    assert any(note.startswith(f"{data_bound_run.name}: data-bound") for note in page.notes)
    assert not any(note.startswith("amp: data-bound") for note in page.notes)


@needs_matplotlib
def test_resumed_run_is_one_continuous_curve(training_runs):
    run_dir = training_runs["resumed"]
    log = read_log(run_dir)
    entries = last_written(run_dir / LOG_NAME)
    iterations = {k: v for k, v in entries.items() if isinstance(k, tuple) and len(k) == 2}
    assert log.iterations == dict(sorted(iterations.items()))  # every step once, the resumed value
    assert len(log.iterations) == EPOCHS * ITERATIONS_PER_EPOCH
    xs, _ = log.iteration_series("train.loss")
    assert xs == sorted(xs) and xs[-1] == EPOCHS and xs[0] == 1 / ITERATIONS_PER_EPOCH
    assert [(p.epoch, p.step_in_epoch) for p in log.resume_points] == [(1, 3)]
    assert log.wall_time == sum(session_times(run_dir / LOG_NAME))

    page = parse_page(write_report([run_dir]))
    check_summary_against_log(page, run_dir / LOG_NAME)
    assert summary_value(page, "resumes")[0] == 1
    assert any("resumed at epoch 2 step 3" in note for note in page.notes)  # the log's epoch 1, from 1


def test_page_and_console_agree_on_a_real_run(embedded_data, tmp_path, capsys):
    """A real short `resnext train` and its `resnext evaluate --output-json`: the page's epochs, best numbers and
    evaluation are the console's, and a first epoch far above the rest puts the loss axis on a log scale."""
    import re

    from conftest import copy_subset
    from resnext.report import figures

    data = copy_subset(embedded_data, tmp_path / "data", 13, 4)
    workspace = tmp_path / "run"
    assert main(["train", str(data), "--arch", "resnext_tiny", "--image-size", "32", "-b", "16", "-j", "0",
                 "--epochs", "4", "--lr", "0.2", "--warmup", "0", "--print-freq", "8", "--no-tensorboard",
                 "--no-progress", "--workspace", str(workspace)]) == 0
    console = capsys.readouterr().out
    best_epoch = int(re.search(r"summary: .*best\.epoch (\d+)", console).group(1))
    best_top1 = float(re.search(r"summary: best\.top1 ([\d.]+)", console).group(1))
    assert f"epoch {best_epoch}: val.top1 {best_top1:.3g}" in console  # the console agrees with itself
    assert main(["evaluate", str(data / "val"), "--weights", str(workspace / "model_best.pth.tar"), "-j", "0",
                 "--output-json", str(workspace / "evaluation.json")]) == 0
    printed_top1 = float(re.search(r"top-1 ([\d.]+)%", capsys.readouterr().out).group(1))
    page = parse_page(write_report([workspace]))
    assert summary_value(page, "best.epoch")[1] == str(best_epoch)
    assert summary_value(page, "best.top1")[1] == f"{best_top1:.2f}"
    assert summary_value(page, "evaluation.top1")[1] == f"{printed_top1:.2f}"
    assert page.tables["evaluation"]["top1"][0][1] == f"{printed_top1:.2f}"
    assert "Top-5 at the best top-1 epoch (%)" in (workspace / "report" / "index.html").read_text()

    log = read_log(workspace)
    losses = log.epoch_series("val.loss")[1]
    with figures._canvas() as new_figure:
        axis = figures._val_loss(new_figure, [("run", log)]).axes[0]
        scale = axis.get_yscale()
    assert scale == ("log" if max(losses) > figures.LOG_SCALE_SPAN * min(losses) else "linear"), losses


def test_a_diverging_first_epoch_puts_the_loss_on_a_log_scale(tmp_path):
    from resnext.report import figures

    writer = LogWriter(tmp_path / LOG_NAME)
    writer.start(arch="resnext_tiny", iterations_per_epoch=1, epochs=4)
    for epoch, loss in enumerate((29.1, 0.9, 0.7, 0.6)):
        writer.write([epoch, 1], {"train.loss": 2.0 - epoch / 4})
        writer.write([epoch], {"val.top1": 50.0 + epoch, "val.top5": 90.0, "val.loss": loss})
    log = read_log(tmp_path)
    with figures._canvas() as new_figure:
        val_axis = figures._val_loss(new_figure, [("run", log)]).axes[0]
        train_axis = figures._train_loss(new_figure, [("run", log)]).axes[0]
        assert (val_axis.get_yscale(), val_axis.get_ylabel()) == ("log", "loss (log scale)")
        assert (train_axis.get_yscale(), train_axis.get_ylabel()) == ("linear", "loss")


def session_times(path: Path) -> list[float]:
    """The largest elapsedtime of each session (a session starts at a PARAMETER line)."""
    times = []
    for line in path.read_text().splitlines():
        record = json.loads(line.removeprefix("DLLL "))
        if record.get("step") == "PARAMETER":
            times.append(0.0)
        if "elapsedtime" in record and times:  # METADATA lines come before a session's PARAMETER line
            times[-1] = max(times[-1], float(record["elapsedtime"]))
    return times


@needs_matplotlib
def test_partial_run_still_going(training_runs, tmp_path, caplog):
    run_dir = tmp_path / "partial"
    shutil.copytree(training_runs["partial"], run_dir)
    output = run_dir / "report"
    # An earlier report of a finished run in the same folder: figures this one cannot draw must go.
    write_report([training_runs["amp"] / LOG_NAME], output)
    assert (output / "val_accuracy.png").exists()
    with caplog.at_level(logging.WARNING, logger="resnext"):
        page = parse_page(write_report([run_dir]))
    assert "skipped 1 malformed line" in caplog.text and "still be writing" in caplog.text
    assert any("run in progress" in note for note in page.notes)
    assert any("no validation yet" in note for note in page.notes)
    check_figures(page, output, {"train_loss", "learning_rate", "loss_scale", "throughput"})
    assert not (output / "val_accuracy.png").exists() and not (output / "val_loss.png").exists()
    assert summary_value(page, "status") == ("in progress", "in progress")
    assert "best.top1" not in page.tables["summary"] and summary_value(page, "epochs_finished")[0] == 0
    last = max(k for k in last_written(run_dir / LOG_NAME) if isinstance(k, tuple))
    assert summary_value(page, "progress")[0] == last[0] + last[1] / ITERATIONS_PER_EPOCH
    compute = [d["train.compute_ips"] for k, d in last_written(run_dir / LOG_NAME).items() if isinstance(k, tuple)]
    assert summary_value(page, "train.compute_ips")[0] == pytest.approx(sum(compute) / len(compute), rel=1e-12)


@needs_matplotlib
def test_run_with_evaluation_json_and_hostile_strings(tmp_path, caplog):
    run_dir = tmp_path / "<b>run&$\\frac$"  # HTML and matplotlib mathtext syntax: must show as typed
    run_dir.mkdir()
    writer = LogWriter(run_dir / LOG_NAME)
    writer.start(arch="<script>alert(1)</script>", precision="fp32", iterations_per_epoch=4, epochs=1)
    for step in range(1, 5):
        writer.write([0, step], {"train.loss": 2.0 / step, "train.lr": 0.1})
    writer.write([0], {"train.loss": 1.0, "val.top1": 50.0, "val.top5": 90.0, "val.loss": 1.5})
    evaluation = _evaluation(num_classes=4)
    evaluation["class_names"][0] = evaluation["per_class"][0]["name"] = "$\\frac$ <i>"
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation))
    index = write_report([run_dir])
    html = index.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;run&amp;$\\frac$" in html
    assert "<i>" not in html and "$\\frac$ &lt;i&gt;" in html
    page = parse_page(index)
    assert summary_value(page, "evaluation.top1")[0] == evaluation["top1"]
    assert summary_value(page, "best.top1") == (50.0, "50.00")
    check_figures(page, index.parent, {"train_loss", "learning_rate", "val_accuracy", "val_loss",
                                       "per_class_accuracy", "confusion_matrix"})

    # The same run twice (legends name the runs) with a broken evaluation.json, into the same folder.
    (run_dir / "evaluation.json").write_text('{"top1": "high"}')
    with caplog.at_level(logging.WARNING, logger="resnext"):
        page = parse_page(write_report([run_dir, run_dir], index.parent))
    assert "'top1' must be a number" in caplog.text and "evaluation.top1" not in page.tables["summary"]
    assert page.headers["summary"][1:] == ["<b>run&$\\frac$", "<b>run&$\\frac$ (2)"]
    assert not (index.parent / "confusion_matrix.png").exists()  # figures of the earlier report are not left


def _evaluation(num_classes: int) -> dict:
    names = [f"class_{i}" for i in range(num_classes)]
    confusion = [[(10 if i == j else (i + j) % 3) for j in range(num_classes)] for i in range(num_classes)]
    per_class = [{"name": name, "images": sum(row), "top1": 100.0 * row[i] / sum(row)}
                 for i, (name, row) in enumerate(zip(names, confusion))]
    return {"top1": 71.234, "top5": 95.5, "loss": 1.1, "images": sum(map(sum, confusion)), "img_s": 812.5,
            "latency_ms": {"mean": 12.0, "p90": 13.0, "p95": 14.0, "p99": 20.0}, "per_class": per_class,
            "confusion": confusion, "class_names": names, "weights": "runs/x/best.pt", "arch": "resnext101_32x4d"}


@needs_matplotlib
def test_evaluation_report(tmp_path):
    small = _evaluation(num_classes=12)
    page = parse_page(write_evaluation_report(small, tmp_path / "small"))
    check_figures(page, tmp_path / "small", {"per_class_accuracy", "confusion_matrix"})
    assert page.tables["evaluation"]["top1"] == [("71.234", "71.23")]
    assert page.tables["evaluation"]["latency_ms.p99"] == [("20.0", "20.00")]

    large = _evaluation(num_classes=60)
    page = parse_page(write_evaluation_report(large, tmp_path / "large"))
    check_figures(page, tmp_path / "large", {"per_class_accuracy"})
    assert any("60 classes are more than 50" in note for note in page.notes)

    for broken, message in (({**small, "confusion": [[1, 2]]}, "12 x 12"),
                            ({**small, "per_class": [{"name": "a"}]}, "per_class"),
                            ([], "JSON object")):
        with pytest.raises(UserError, match=message):
            write_evaluation_report(broken, tmp_path / "broken")


@needs_matplotlib
def test_cli_report_and_its_errors(training_runs, tmp_path, capsys):
    result = subprocess.run([sys.executable, "-m", "resnext", "report", str(training_runs["tf32"]),
                             "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "out" / "index.html")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"resnext report: error: no training log in '{tmp_path / 'empty'}': expected {LOG_NAME} there; if the run "
        "was started with --raport-file, give that file instead.")


def test_missing_matplotlib_is_a_user_error(training_runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is not installed
    with pytest.raises(UserError, match=r'pip install "resnext\[report\]"'):
        write_report([training_runs["tf32"]], tmp_path)


# ---- the log reader's rules -------------------------------------------------------------------------------------

def test_missing_or_empty_log_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_log(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no training log in"):
        read_log(tmp_path)
    (tmp_path / LOG_NAME).write_text("")
    with pytest.raises(UserError, match=f"'{tmp_path / LOG_NAME}' holds no entries"):
        read_log(tmp_path)
    (tmp_path / LOG_NAME).write_text("garbage\nDLLL {\"step\": [0, 1]}\n")
    with pytest.raises(UserError, match="every line is malformed"):
        read_log(tmp_path)


def test_malformed_lines_are_skipped_with_one_warning(tmp_path, caplog):
    writer = LogWriter(tmp_path / LOG_NAME)
    writer.start(iterations_per_epoch=4)
    writer.write([0, 1], {"train.loss": 3.0})
    writer.raw("not json at all\n")
    writer.write([0, 2], {"train.loss": 2.5, "train.lr": "fast"})
    writer.raw('DLLL {"type": "LOG", "step": "SOMETHING", "data": {}}\n')
    writer.raw('DLLL {"type": "LOG", "step": [0, -1], "data": {"train.loss": 1}}\n')
    writer.raw('DLLL {"type": "LOG", "step": [0, 3], "data": [1, 2]}\n')
    writer.write([0, 3], {"train.loss": float("nan")})
    writer.raw('DLLL {"type": "LOG", "step": [0, 4], "da')
    with caplog.at_level(logging.WARNING, logger="resnext"):
        log = read_log(tmp_path / LOG_NAME)
    assert log.skipped_lines == [4, 6, 7, 8, 10]
    assert len(caplog.records) == 1 and "4, 6, 7, 8, 10 (the last one is incomplete" in caplog.text
    xs, ys = log.iteration_series("train.loss")
    assert xs == [0.25, 0.5, 0.75] and ys[:2] == [3.0, 2.5] and math.isnan(ys[2])
    assert log.iteration_series("train.lr") == ([], [])  # a non-number is no point
    assert log.metadata["train.loss"]["format"] == ":>5.5f"
    assert log.parameters == {"iterations_per_epoch": 4} and len(log.sessions) == 1


def test_resume_drops_the_abandoned_branch_and_restart_drops_everything(tmp_path):
    writer, history = LogWriter(tmp_path / LOG_NAME), {}
    simulate_training(writer, seed=5, stop=(2, 2), preempted=True, history=history)
    simulate_training(writer, seed=6, resume=(1, 0), stop=(1, 5), history=history)
    log = read_log(tmp_path)
    # Still running after the resume: epoch 1 end and epoch 2 of the first session are gone, not shown as current.
    assert max(log.iterations) == (1, 5) and list(log.epochs) == [0]
    assert log.sessions[1].superseded == ITERATIONS_PER_EPOCH + 2 + 1 + 1  # (1, 1..8), (2, 1..2), [1], summary
    assert log.progress == 1 + 5 / ITERATIONS_PER_EPOCH and not log.finished
    first_session_epoch0 = [d for s, d in logged(tmp_path / LOG_NAME) if s == [0]]
    assert log.epochs[0]["val.top1"] == first_session_epoch0[-1]["val.top1"]
    summary = run_summary(log)
    assert summary["status"] == "in progress" and summary["best.epoch"] == 0 and summary["resumes"] == 1

    simulate_training(writer, seed=7, lr=0.1, stop=(0, 2))  # a new run from scratch in the same workspace
    log = read_log(tmp_path)
    assert list(log.iterations) == [(0, 1), (0, 2)] and log.epochs == {} and log.parameters["lr"] == 0.1
    assert log.sessions[2].superseded > 0 and log.resume_points == [log.sessions[1].resume]


def test_summary_of_a_training_only_run_with_a_diverged_step(tmp_path):
    writer = LogWriter(tmp_path / LOG_NAME)
    writer.start(iterations_per_epoch=2, epochs=1)
    writer.raw('DLLL {"type": "LOG", "step": [0, 1], "data": {"train.loss": "nan", "train.total_ips": 10.0}}\n')
    writer.write([0, 2], {"train.loss": 2.0, "train.total_ips": 30.0})
    writer.write([0], {"train.loss": "inf", "train.total_ips": 20.0})
    writer.write([], {"best.top1": 0.0, "best.top5": 0.0, "best.epoch": -1, "run.time": 1.0,
                      "exit.reason": "completed"})
    log = read_log(tmp_path)
    xs, ys = log.iteration_series("train.loss")
    assert xs == [0.5, 1.0] and math.isnan(ys[0]) and log.epoch_series("train.loss") == ([1.0], [math.inf])
    summary = run_summary(log)
    assert summary["status"] == "completed" and summary["epochs_finished"] == 1
    assert summary["best.top1"] is None and summary["best.epoch"] is None  # no epoch was validated
    assert summary["train.total_ips"] == 20.0  # the epoch mean, not the per-iteration values


def test_smoothing():
    assert smooth([2.0] * 200) == pytest.approx([2.0] * 200)  # debiased: no ramp up from zero
    noisy = [1.0 + (-1) ** i for i in range(1000)]
    assert max(smooth(noisy)[100:]) - min(smooth(noisy)[100:]) < 0.1
    assert smooth([1.0, float("nan"), 3.0])[1] == 1.0
    assert smooth([]) == []
