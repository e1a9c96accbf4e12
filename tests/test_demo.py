"""`resnext demo`, the README's first command, end to end (one epoch instead of fifteen)."""
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
    assert (workspace / "report" / "index.html").is_file()
    assert (tmp_path / "home").is_dir()
    again = run_command([sys.executable, "-m", "resnext", "demo", "--epochs", "1", "--workspace", str(workspace),
                         "--device", "cpu", "--no-report"])
    assert again.returncode == 0 and "nothing to do" in again.stdout
