"""resnext: ResNeXt101-32x4d and its ResNet/ResNeXt family, trained with NVIDIA's recipe.

The public API (stable):
    list_models()                                   names of the architectures
    create_model(arch, num_classes=1000, **options) a freshly initialised nn.Module
    load_weights(model, source, strict=True)        load any public checkpoint layout, safely
    load_model(source, arch=None, num_classes=None) build the model a weights file holds, with its metadata
    model_summary(arch_or_model, image_size=224)    parameters, GMACs, activations per stage
    read_log(run_dir_or_log) -> RunLog              a training log as one timeline (resumes, partial logs)
    write_report(run_dirs, output=None) -> Path     HTML page + PNG figures of one run or several overlaid
    predict(paths, weights, topk=5) -> [Prediction] top-k class names of image files, folders, glob patterns
    Predictor, Preprocessing                        a loaded model with its names; the eval preprocessing
    evaluate_weights(data, weights) -> dict         top-1/top-5/loss, img/s, latency percentiles, per class
    export_model(weights, format, output)           verified ONNX / TorchScript / ExportedProgram / safetensors
                                                    / Triton repository (resnext.serve.serve: a live server)
"""
from .errors import UserError
from .export import export_model
from .inference import evaluate_weights
from .models import create_model, list_models
from .predict import Predictor, Preprocessing, predict
from .report import read_log, write_report
from .summary import model_summary
from .weights import load_model, load_weights

__version__ = "0.1.0"

__all__ = ["Predictor", "Preprocessing", "UserError", "create_model", "evaluate_weights", "export_model",
           "list_models", "load_model", "load_weights", "model_summary", "predict", "read_log", "write_report",
           "__version__"]
