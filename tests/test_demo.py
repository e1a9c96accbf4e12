"""`resnext demo`, the README's first command, end to end (one epoch instead of fifteen)."""
import json
import re
import sys

from conftest import run_command
from optional import needs_matplotlib


@needs_matplotlib
def test_demo_trains_evaluates_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEXT_HOME", str(tmp_path / "home"))  # the embedded dataset is materialized there
    workspace = tmp_path / "demo"
    result = run_command([sys.executable, "-m", "resnext", "demo", "--epochs", "1", "--workspace", str(workspace),
                          "--device", "cpu"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "top-1" in result.stdout and "on 1,000 held-out images" in result.stdout
    assert (workspace / "model_best.pth.tar").is_file()
    # The evaluation of the best checkpoint the demo prints is on its page, next to the training curves.
    printed = re.search(r"best checkpoint \(epoch (\d+)\): top-1 ([\d.]+)%", result.stdout)
    evaluation = json.loads((workspace / "evaluation.json").read_text())
    assert f"{evaluation['top1']:.2f}" == printed.group(2)
    page = (workspace / "report" / "index.html").read_text()
    assert f'data-key="evaluation.top1"><th scope="row">Evaluation top-1 (%)</th><td data-value="{evaluation["top1"]}">' \
        f'{printed.group(2)}</td>' in page
    assert f'data-key="best.epoch"><th scope="row">Best top-1: epoch (from 1)</th><td data-value="0">' \
        f'{printed.group(1)}</td>' in page and '<table id="evaluation">' in page
    assert (tmp_path / "home").is_dir()
    again = run_command([sys.executable, "-m", "resnext", "demo", "--epochs", "1", "--workspace", str(workspace),
                         "--device", "cpu", "--no-report"])
    assert again.returncode == 0 and "nothing to do" in again.stdout
