"""`resnext serve`: the model behind NVIDIA's Triton Inference Server (through PyTriton), with dynamic batching.

One server, two models (MODEL is --model-name, default "resnext"); docs/deployment.md has client code:

  MODEL         input  images         FP32  [3, S, S]  preprocessed images, the contract of `resnext export`
                output logits         FP32  [classes]
  MODEL_image   input  image          BYTES [1]        one encoded image file (JPEG, PNG, WebP, ...)
                output logits         FP32  [classes]
                       classes        BYTES [k]        the k best class names, best first
                       probabilities  FP32  [k]        their softmax probabilities
                       error          BYTES [1]        empty, or why the image could not be read (then the
                                                       numbers are NaN and the names empty)

An unreadable image fails only its own item: requests batched together by Triton are answered as usual.
The model runs in this process (PyTriton hands it the batches Triton forms); the Triton server and its Python
stubs are child processes that end with it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import UnreadableImageError
from .deployment import SERVE_MAX_BATCH, SERVE_PORTS, SERVE_QUEUE_DELAY_US
from .errors import UserError
from .prediction import Predictor

# Seconds Triton waits for in-flight requests and the Python stubs at shutdown; unloading takes about 3 s.
EXIT_TIMEOUT_S = 15
INSTALL_HINT = 'pip install "resnext[serve]"'


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"  # what tritonclient.http.InferenceServerClient takes

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


class Server:
    """A Triton server for one Predictor; `start()` returns once both models answer, `stop()` shuts it down.

    Ports given as 0 are picked among the free ones; `endpoints` says which were used. Use it as a context
    manager, or call start() and stop().
    """

    def __init__(self, predictor: Predictor, *, model_name: str = "resnext", host: str = "127.0.0.1",
                 http_port: int = SERVE_PORTS["http"], grpc_port: int = SERVE_PORTS["grpc"],
                 metrics_port: int = SERVE_PORTS["metrics"], max_batch_size: int = SERVE_MAX_BATCH,
                 queue_delay_us: int = SERVE_QUEUE_DELAY_US, topk: int = 5,
                 log_file: str | os.PathLike | None = None) -> None:
        from .export import TRITON_NAME

        if not TRITON_NAME.match(model_name):
            raise UserError(f"model name '{model_name}' may only hold letters, digits, '_', '.' and '-'.")
        if max_batch_size < 1 or queue_delay_us < 0 or topk < 1:
            raise UserError(f"max batch size and top-k must be >= 1 and the queue delay >= 0, got {max_batch_size}, "
                            f"{topk} and {queue_delay_us}.")
        self.predictor = predictor
        self.model_name = model_name
        self.image_model_name = f"{model_name}_image"
        self.max_batch_size = max_batch_size
        self.queue_delay_us = queue_delay_us
        self.topk = min(topk, predictor.num_classes)
        self.endpoints = _choose_ports(host, {"http": http_port, "grpc": grpc_port, "metrics": metrics_port})
        self.log_file = Path(log_file) if log_file else None  # None: a new temporary file at start()
        self._triton = None

    def start(self) -> "Server":
        pytriton = _import_pytriton()
        _let_stub_find_libpython()
        self.log_file = self.log_file or _temporary_log()
        endpoints = self.endpoints
        config = pytriton.TritonConfig(
            http_address=endpoints.host, grpc_address=endpoints.host, metrics_address=endpoints.host,
            http_port=endpoints.http_port, grpc_port=endpoints.grpc_port, metrics_port=endpoints.metrics_port,
            exit_timeout_secs=EXIT_TIMEOUT_S, log_file=self.log_file)
        self._triton = pytriton.Triton(config=config)
        try:
            self._bind(pytriton)
            self._triton.run()
        except Exception as err:  # PyTriton raises its own, tritonclient's and timeout errors for a failed start
            self.stop()
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"the Triton server did not start ({first[:200]}); its log is {self.log_file}.") from None
        return self

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None

    @property
    def alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()

    # ---- the two models ---------------------------------------------------------------------------------

    def _bind(self, pytriton) -> None:
        size = self.predictor.preprocessing.image_size
        classes = self.predictor.num_classes
        Tensor = pytriton.Tensor
        config = pytriton.ModelConfig(max_batch_size=self.max_batch_size, batcher=pytriton.DynamicBatcher(
            max_queue_delay_microseconds=self.queue_delay_us))
        self._triton.bind(
            model_name=self.model_name, infer_func=pytriton.batch(self._infer_tensors),
            inputs=[Tensor(name="images", dtype=np.float32, shape=(3, size, size))],
            outputs=[Tensor(name="logits", dtype=np.float32, shape=(classes,))], config=config, strict=True)
        self._triton.bind(
            model_name=self.image_model_name, infer_func=pytriton.batch(self._infer_images),
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="logits", dtype=np.float32, shape=(classes,)),
                     Tensor(name="classes", dtype=bytes, shape=(self.topk,)),
                     Tensor(name="probabilities", dtype=np.float32, shape=(self.topk,)),
                     Tensor(name="error", dtype=bytes, shape=(1,))], config=config, strict=True)

    def _infer_tensors(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": self.predictor.logits(torch.tensor(images)).numpy()}

    def _infer_images(self, image: np.ndarray) -> dict[str, np.ndarray]:
        items = image.reshape(len(image))
        pixels, errors = [], []
        for item in items:
            try:
                pixels.append(self.predictor.preprocessing(bytes(item)))
                errors.append(b"")
            except UnreadableImageError as err:
                pixels.append(None)
                errors.append(err.reason.encode("utf-8"))
        readable = [index for index, tensor in enumerate(pixels) if tensor is not None]
        logits = np.full((len(items), self.predictor.num_classes), np.nan, dtype=np.float32)
        names = np.full((len(items), self.topk), b"", dtype=object)
        probabilities = np.full((len(items), self.topk), np.nan, dtype=np.float32)
        if readable:
            scores = self.predictor.logits(torch.stack([pixels[index] for index in readable]))
            best, best_probabilities = self.predictor.top(scores, self.topk)
            logits[readable] = scores.numpy()
            probabilities[readable] = np.asarray(best_probabilities, dtype=np.float32)
            for row, indices in zip(readable, best):
                names[row] = [self.predictor.class_names[i].encode("utf-8") for i in indices]
        return {"logits": logits, "classes": names, "probabilities": probabilities,
                "error": np.array(errors, dtype=object).reshape(len(items), 1)}


def serve(weights, *, use_ema: bool = False, arch: str | None = None, device: str | torch.device | None = None,
          precision: str | None = None, image_size: int | None = None, crop_pct: float | None = None,
          interpolation: str | None = None, exif_orientation: bool = True, class_names=None,
          on_ready: Callable[[Server], None] | None = None, **server_options) -> None:
    """Serve the model in `weights` until a stop signal (SIGTERM, SIGINT, SIGHUP, SIGUSR1) or until Triton stops, then
    shut down cleanly.

    server_options: Server's keyword arguments (model_name, host, http_port, grpc_port, metrics_port,
    max_batch_size, queue_delay_us, topk, log_file). on_ready(server) runs once the models answer.
    exif_orientation: MODEL_image turns each image upright by its EXIF orientation tag first (photos from
    phones); class_names: names for weights without them, or a check of theirs (prediction.class_names_for).
    """
    predictor = Predictor.from_weights(weights, use_ema=use_ema, arch=arch, device=device, precision=precision,
                                       image_size=image_size, crop_pct=crop_pct, interpolation=interpolation,
                                       exif_orientation=exif_orientation, class_names=class_names)
    server = Server(predictor, **server_options)
    stop = threading.Event()
    with _stop_on_signals(stop):
        server.start()
        try:
            if on_ready is not None:
                on_ready(server)
            while not stop.wait(0.5):
                if not server.alive:
                    raise UserError(f"the Triton server stopped unexpectedly; its log is {server.log_file}.")
        finally:
            server.stop()


# ---- set-up helpers ---------------------------------------------------------------------------------------

class _PyTriton:
    """The PyTriton names serve uses, imported on demand (it is an optional extra)."""

    def __init__(self) -> None:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        self.batch, self.DynamicBatcher, self.ModelConfig, self.Tensor = batch, DynamicBatcher, ModelConfig, Tensor
        self.Triton, self.TritonConfig = Triton, TritonConfig


def _import_pytriton() -> _PyTriton:
    try:
        return _PyTriton()
    except ImportError as err:
        raise UserError(f"resnext serve needs NVIDIA's PyTriton ({err}): {INSTALL_HINT}.") from None


def _let_stub_find_libpython() -> None:
    """Point the Triton processes at this interpreter's libpython.

    PyTriton's Python-backend stub links libpython3.X.so dynamically. With an interpreter built outside the
    system (pyenv, conda, and venvs made from them) the loader finds the system's libpython instead, whose
    different patch release breaks the stub at model load (measured with pyenv's 3.11.7:
    "'_thread.RLock' object has no attribute '_recursion_count'"). Triton inherits this process's environment.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    library = sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not library or not (Path(libdir) / library).is_file():
        return  # a statically linked interpreter: the stub uses whatever libpython the system has
    current = [entry for entry in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if entry]
    if libdir not in current:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *current])


def _choose_ports(host: str, ports: dict[str, int]) -> Endpoints:
    """The ports to use: 0 becomes a free one; a taken port or an unknown host is a UserError."""
    chosen = {}
    for name, port in ports.items():
        if not 0 <= port <= 65535:
            raise UserError(f"--{name}-port must be between 0 and 65535, got {port}.")
        chosen[name] = _probe(host, port, name)
    if len(set(chosen.values())) < len(chosen):
        raise UserError(f"the HTTP, gRPC and metrics ports must differ, got {', '.join(map(str, chosen.values()))}.")
    return Endpoints(host, chosen["http"], chosen["grpc"], chosen["metrics"])


def _probe(host: str, port: int, name: str) -> int:
    """Bind (host, port) the way a server would, then release it; returns the port (a free one for 0)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        raise UserError(f"--host '{host}' is not an address of this machine; use 127.0.0.1 (local clients only) "
                        "or 0.0.0.0 (every interface).") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Triton does: TIME_WAIT is not "in use"
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"{name} port {port} on {host} is in use (another server?); pass another "
                                f"--{name}-port, or 0 for a free one.") from None
            if err.errno == errno.EACCES:
                raise UserError(f"{name} port {port} needs administrator rights; use a port above 1023.") from None
            raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); check --host.") from None
        return probe.getsockname()[1]


def _temporary_log() -> Path:
    handle, path = tempfile.mkstemp(prefix="resnext-triton-", suffix=".log")
    os.close(handle)
    return Path(path)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """The stop signals (SIGTERM, SIGINT, SIGHUP, SIGUSR1: resnext.preemption) set `stop` instead of interrupting
    the server mid-request (main thread only)."""
    from .preemption import STOP_SIGNALS

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
