"""resnext: ResNeXt101-32x4d and its ResNet/ResNeXt family, trained with NVIDIA's recipe.

The public API (stable):
    list_models()                                   names of the architectures
    create_model(arch, num_classes=1000, **options) a freshly initialised nn.Module
    load_weights(model, source, strict=True)        load any public checkpoint layout, safely
    model_summary(arch_or_model, image_size=224)    parameters, GMACs, activations per stage
"""
from .errors import UserError
from .models import create_model, list_models
from .summary import model_summary

__version__ = "0.1.0"

__all__ = ["UserError", "create_model", "list_models", "model_summary", "__version__"]
