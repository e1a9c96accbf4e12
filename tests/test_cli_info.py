import json
import subprocess
import sys


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "resnext", *args], capture_output=True, text=True, timeout=300)


def test_info_prints_params_and_gmacs():
    result = run_cli("info", "--arch", "resnext101_32x4d")
    assert result.returncode == 0, result.stderr
    assert "44,177,704" in result.stdout
    assert "7.97" in result.stdout and "8.01" in result.stdout


def test_info_json_and_nvidia_alias():
    result = run_cli("info", "--arch", "resnext101-32x4d", "--image-size", "160", "--json")
    data = json.loads(result.stdout)
    assert data["arch"] == "resnext101_32x4d" and data["image_size"] == 160
    assert data["stages"][-2]["output_shape"] == [2048, 5, 5]


def test_info_list():
    result = run_cli("info", "--list")
    assert result.returncode == 0 and "se_resnext101_32x4d" in result.stdout


def test_info_user_errors_are_one_line():
    for args in (["--arch", "resnet51"], ["--image-size", "0"], ["--image-size", "abc"]):
        result = run_cli("info", *args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
