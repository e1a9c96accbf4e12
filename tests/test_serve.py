"""resnext serve: a real Triton server (PyTriton) answers tritonclient with PyTorch's logits, batches concurrent
requests, and stops cleanly on SIGTERM. One server start; everything else runs without a server."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_support import CLASSES, assert_user_error, single_thread, trained  # noqa: F401  (fixtures)
from optional import needs_pytriton

from resnext.prediction import Preprocessing
from resnext.serve import _let_stub_find_libpython, _stop_on_signals
from resnext.weights import load_model

STARTUP_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 60.0
CONCURRENT_REQUESTS = 8


def wait_for_line(path: Path, marker: str, process: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if marker in text:
            return text
        if process.poll() is not None:
            pytest.fail(f"resnext serve exited with {process.returncode} before it was ready:\n{text}")
        time.sleep(0.2)
    pytest.fail(f"resnext serve was not ready after {timeout} s:\n{path.read_text(errors='replace')}")


def metric(url: str, name: str, model: str) -> float:
    text = urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S).read().decode()
    found = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1))


@needs_pytriton
def test_serve_answers_like_pytorch_batches_and_stops_on_sigterm(trained, tmp_path):
    from tritonclient import grpc as triton_grpc
    from tritonclient import http as triton_http

    output = tmp_path / "serve.out"
    command = [sys.executable, "-m", "resnext", "serve", "--weights", str(trained.best), "--http-port", "0",
               "--grpc-port", "0", "--metrics-port", "0", "--max-batch-size", "8", "--queue-delay-us", "300000",
               "--topk", "2", "--log-file", str(tmp_path / "triton.log"), "--device", "cpu"]
    with output.open("wb") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        text = wait_for_line(output, "SIGTERM stops the server", server, STARTUP_TIMEOUT_S)
        assert "with Triton on 127.0.0.1" in text  # loopback unless --host says otherwise
        http_url = re.search(r"HTTP (\S+)", text).group(1)
        grpc_url = re.search(r"gRPC (\S+)", text).group(1)
        metrics_url = re.search(r"metrics (\S+)", text).group(1)
        model, meta = load_model(trained.best)
        preprocessing = Preprocessing.for_weights(meta)

        # Preprocessed tensors over HTTP: the logits of the PyTorch model.
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        with triton_http.InferenceServerClient(http_url, connection_timeout=REQUEST_TIMEOUT_S,
                                               network_timeout=REQUEST_TIMEOUT_S) as client:
            request = triton_http.InferInput("images", list(images.shape), "FP32")
            request.set_data_from_numpy(images.numpy())
            logits = client.infer("resnext", [request]).as_numpy("logits")
        with torch.no_grad():
            assert np.abs(logits - model(images).numpy()).max() < 1e-5

        # Encoded image files over gRPC, one unreadable: that item carries the error, the other its answer.
        path = sorted((trained.val / "sneaker").iterdir())[0]
        files = np.array([[path.read_bytes()], [b"not an image"]], dtype=object)
        with triton_grpc.InferenceServerClient(grpc_url) as client:
            request = triton_grpc.InferInput("image", [2, 1], "BYTES")
            request.set_data_from_numpy(files)
            answer = client.infer("resnext_image", [request], client_timeout=REQUEST_TIMEOUT_S)
        with torch.no_grad():
            expected = model(preprocessing(path)[None])[0]
        assert np.abs(answer.as_numpy("logits")[0] - expected.numpy()).max() < 1e-5
        best = expected.softmax(0).topk(2)
        assert answer.as_numpy("classes")[0].tolist() == [CLASSES[i].encode() for i in best.indices]
        assert answer.as_numpy("classes")[0, 0] == b"sneaker"  # a held-out image the model knows
        assert answer.as_numpy("probabilities")[0] == pytest.approx(best.values.tolist(), abs=1e-5)
        assert answer.as_numpy("error")[0, 0] == b""
        assert b"not an image" in answer.as_numpy("error")[1, 0] and np.isnan(answer.as_numpy("logits")[1]).all()

        # Concurrent single-image requests are batched by Triton: fewer model executions than requests.
        executions = metric(metrics_url, "nv_inference_exec_count", "resnext")

        def one_request(index: int) -> float:
            with triton_http.InferenceServerClient(http_url, network_timeout=REQUEST_TIMEOUT_S) as client:
                request = triton_http.InferInput("images", [1, 3, 32, 32], "FP32")
                request.set_data_from_numpy(np.full((1, 3, 32, 32), index, dtype=np.float32))
                return float(client.infer("resnext", [request]).as_numpy("logits")[0, 0])

        with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
            answers = list(pool.map(one_request, range(CONCURRENT_REQUESTS)))
        with torch.no_grad():
            for index, value in enumerate(answers):  # each request got its own answer back
                assert value == pytest.approx(float(model(torch.full((1, 3, 32, 32), float(index)))[0, 0]),
                                              abs=1e-4)
        assert metric(metrics_url, "nv_inference_count", "resnext") == 2 + CONCURRENT_REQUESTS
        batches = metric(metrics_url, "nv_inference_exec_count", "resnext") - executions
        assert 1 <= batches < CONCURRENT_REQUESTS

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert output.read_text(errors="replace").rstrip().endswith("server stopped")
    assert "successfully loaded 'resnext_image'" in (tmp_path / "triton.log").read_text()  # --log-file
    port = int(http_url.rsplit(":", 1)[1])
    with socket.socket() as probe:  # the port is free again: nothing was left listening
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_sigint_and_sigterm_request_a_stop_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    stop = threading.Event()
    with _stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(5)
        stop.clear()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGINT) is before


def test_the_python_stub_is_pointed_at_this_interpreters_libpython(monkeypatch):
    libdir = sysconfig.get_config_var("LIBDIR")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/other/lib")
    _let_stub_find_libpython()
    _let_stub_find_libpython()
    library = Path(libdir) / sysconfig.get_config_var("LDLIBRARY")
    expected = f"{libdir}:/opt/other/lib" if library.is_file() else "/opt/other/lib"
    assert os.environ["LD_LIBRARY_PATH"] == expected


# ---- errors a user can cause: (argv after "serve --weights W", part of the one-line message) -------------------

@pytest.fixture
def busy_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


FREE = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
USER_ERRORS = [
    pytest.param(lambda port: ["--http-port", str(port), "--grpc-port", "0", "--metrics-port", "0"],
                 "is in use", id="port-in-use"),
    pytest.param(lambda port: ["--http-port", "0", "--grpc-port", str(port), "--metrics-port", "0"],
                 "is in use", id="grpc-port-in-use"),
    pytest.param(lambda port: ["--host", "no-such-host.invalid", *FREE], "not an address", id="unknown-host"),
    pytest.param(lambda port: ["--model-name", "../escape", *FREE], "may only hold", id="bad-model-name"),
]


@pytest.mark.parametrize("make_argv, message", USER_ERRORS)
def test_user_errors_are_one_line(trained, busy_port, capsys, make_argv, message):
    assert_user_error(capsys, "serve", ["--weights", trained.best, *make_argv(busy_port)], message)


def test_pytriton_missing_says_how_to_install(trained, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytriton.decorators", None)  # `from pytriton.decorators import` fails
    assert_user_error(capsys, "serve", ["--weights", trained.best, *FREE], 'pip install "resnext[serve]"')


def test_missing_weights(tmp_path, capsys):
    assert_user_error(capsys, "serve", ["--weights", tmp_path / "nope.pth", *FREE], "does not exist")
