"""resnext evaluate: reproduces the training log's top-1 for a checkpoint, and its JSON / report / summary outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from inference_support import assert_user_error, single_thread, trained  # noqa: F401  (fixtures)
from optional import needs_dali, needs_matplotlib

from resnext.cli import main
from resnext.report import check_evaluation


def evaluate_json(capsys, *argv: str) -> dict:
    assert main(["evaluate", *map(str, argv), "--json", "-j", "0"]) == 0
    return json.loads(capsys.readouterr().out)


def test_reproduces_the_training_logs_top1_for_each_checkpoint(trained, capsys):
    # checkpoints[e] holds the weights validated at the end of epoch e; a batch size unlike training's (8).
    for epoch in (0, len(trained.checkpoints) - 1):
        logged = trained.epochs[epoch]
        result = evaluate_json(capsys, trained.val, "--weights", trained.checkpoints[epoch], "-b", 13)
        assert result["top1"] == pytest.approx(logged["val.top1"], abs=1e-9)
        assert result["top5"] == pytest.approx(logged["val.top5"], abs=1e-9)
        assert result["loss"] == pytest.approx(logged["val.loss"], rel=1e-4)
        assert result["images"] == 48
    # The EMA weights reproduce the log's EMA line (and are another model than the trained weights).
    ema = evaluate_json(capsys, trained.data, "--weights", trained.checkpoints[0], "--ema", "-b", 16)
    assert ema["top1"] == pytest.approx(trained.epochs[0]["val_ema.top1"], abs=1e-9)
    assert ema["loss"] == pytest.approx(trained.epochs[0]["val_ema.loss"], rel=1e-4)
    assert ema["loss"] != pytest.approx(trained.epochs[0]["val.loss"], rel=1e-3)
    assert ema["ema"] is True


@needs_matplotlib
def test_json_output_file_report_and_summary(trained, capsys, tmp_path):
    output, report = tmp_path / "out" / "evaluation.json", tmp_path / "report"
    result = evaluate_json(capsys, trained.val, "--weights", trained.best, "-b", 10, "--output-json", output,
                           "--report", report, "--interpolation", "bicubic", "--crop-pct", "1.0")
    assert json.loads(output.read_text()) == result
    assert (report / "index.html").is_file() and (report / "confusion_matrix.png").is_file()
    check_evaluation(result)  # the fields the report reads are all valid
    assert result["class_names"] == ["bag", "sneaker", "trouser"]
    assert [item["images"] for item in result["per_class"]] == [16, 16, 16]
    hits = sum(item["top1"] * item["images"] / 100 for item in result["per_class"])
    assert hits == pytest.approx(result["top1"] * 48 / 100)
    assert [sum(row) for row in result["confusion"]] == [16, 16, 16]
    assert sum(result["confusion"][i][i] for i in range(3)) == pytest.approx(hits)
    latency = result["latency_ms"]
    assert list(latency) == ["mean", "p90", "p95", "p99", "p100"]
    assert 0 < latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["p100"]
    assert result["img_s"] > 0 and result["img_s_total"] > 0
    assert result["preprocessing"]["interpolation"] == "bicubic" and result["preprocessing"]["crop_pct"] == 1.0
    assert result["preprocessing"]["image_size"] == 32  # the rest from the checkpoint
    assert result["arch"] == "resnext_tiny" and result["weights"] == str(trained.best)

    assert main(["evaluate", str(trained.val), "--weights", str(trained.best), "-j", "0", "--per-class",
                 "--interpolation", "bicubic", "--crop-pct", "1.0"]) == 0
    text = capsys.readouterr().out
    assert f"top-1 {result['top1']:.2f}%" in text and "p90" in text and "img/s" in text
    weakest_first = sorted(result["per_class"], key=lambda item: (item["top1"], item["name"]))
    assert [line.split()[0] for line in text.splitlines()[-3:]] == [item["name"] for item in weakest_first]


@needs_dali
def test_compiled_channels_last_and_dali_agree_with_eager(trained, capsys):
    eager = evaluate_json(capsys, trained.val, "--weights", trained.best, "-b", 16)
    compiled = evaluate_json(capsys, trained.val, "--weights", trained.best, "-b", 16, "--compile",
                             "--memory-format", "nhwc")
    assert compiled["compile"] is True and compiled["top1"] == eager["top1"]
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-4)
    # Compilation (tens of seconds here) happens in the warm-up, outside the timed batches.
    assert compiled["latency_ms"]["p100"] < 2000
    # NVIDIA's DALI CPU pipeline resizes with its own filter: the same images, nearly the same decisions.
    dali = evaluate_json(capsys, trained.val, "--weights", trained.best, "--data-backend", "dali-cpu")
    assert dali["images"] == 48 and abs(dali["top1"] - eager["top1"]) <= 100 * 2 / 48


# ---- errors a user can cause: (argv after "evaluate", part of the one-line message) ----------------------------

def _text_file(tmp: Path) -> Path:
    path = tmp / "notes.pth"
    path.write_text("not weights\n")
    return path


USER_ERRORS = [
    pytest.param(lambda run, tmp: [run.val, "--weights", tmp / "missing.pth"], "does not exist", id="missing-weights"),
    pytest.param(lambda run, tmp: [run.val, "--weights", _text_file(tmp)], "notes.pth", id="text-file-weights"),
    pytest.param(lambda run, tmp: [run.val, "--weights", run.best, "--arch", "resnet50"], "holds a resnext_tiny",
                 id="weights-of-another-arch"),
    pytest.param(lambda run, tmp: [run.val / "bag", "--weights", run.best], "has no class folders",
                 id="folder-without-classes"),
    pytest.param(lambda run, tmp: [run.data.parent / "nowhere", "--weights", run.best], "does not exist",
                 id="missing-data"),
    pytest.param(lambda run, tmp: [run.val, "--weights", run.best, "--cuda-graphs"], "CUDA",
                 id="cuda-graphs-without-gpu"),
]


@pytest.mark.parametrize("make_argv, message", USER_ERRORS)
def test_user_errors_are_one_line(trained, tmp_path, capsys, make_argv, message):
    assert_user_error(capsys, "evaluate", [*make_argv(trained, tmp_path), "-j", "0"], message)


def test_weights_of_another_class_count(trained, embedded_data, capsys):
    # The 3-class model against the 10 classes of the full embedded dataset: the 7 folders it does not know.
    assert_user_error(capsys, "evaluate", [embedded_data / "val", "--weights", trained.best, "-j", "0"],
                      "class folders ankle_boot, coat, dress, pullover, sandal, shirt and 1 more of")
    assert_user_error(capsys, "evaluate", [embedded_data / "val", "--weights", trained.best, "-j", "0"],
                      "are not among the 3 classes of the weights (bag, sneaker, trouser); rename them")


def test_per_class_table_aligns_wide_characters():
    from resnext.cli.evaluate import display_width, format_evaluation

    names = ["bag", "手提包", "T恤衫", "ｓｈｏｅ", "café"]
    result = {"arch": "resnext_tiny", "weights": "w.pt", "ema": False, "images": 50, "data": "val", "precision": "fp32",
              "device": "cpu", "batch_size": 8, "top1": 50.0, "top5": 90.0, "loss": 1.0, "img_s": 1.0, "img_s_total": 1.0,
              "latency_ms": {"mean": 1.0}, "skipped": [], "class_names": names,
              "per_class": [{"name": name, "images": 10, "top1": 10.0 * i} for i, name in enumerate(names)]}
    rows = format_evaluation(result, per_class=True).splitlines()[-len(names):]
    # The columns after the name have fixed widths: aligned rows take the same terminal width (CJK and full-width
    # letters take two columns each, a combining accent none).
    assert len({display_width(row) for row in rows}) == 1, rows
    assert display_width("手提包") == 6 and display_width("café") == 4 and display_width("cafe\u0301") == 4


def test_a_missing_data_folder_is_refused_before_the_weights_are_read(tmp_path):
    """The folder is checked first: a typo in it must not cost a weights download, nor hide behind a weights error."""
    from resnext.errors import UserError
    from resnext.inference import evaluate_weights

    with pytest.raises(UserError, match="data folder .* does not exist"):
        evaluate_weights(tmp_path / "no-such-folder", tmp_path / "no-such-weights.pt")
