"""torch.hub entry points: one per architecture of the family.

    model = torch.hub.load("<owner>/resnext", "resnext101_32x4d", pretrained=True)       # from GitHub
    model = torch.hub.load("/path/to/checkout", "resnext_tiny", source="local")          # from a checkout

pretrained=False (default) builds fresh weights; True loads the architecture's first public source
(resnext.weights.PRETRAINED, downloaded once into $RESNEXT_HOME/weights); a source name such as "timm-swsl"
picks another. Other keyword arguments go to resnext.create_model (num_classes, conv_init, last_bn_0_init);
with pretrained weights, another num_classes keeps everything but the classifier, for fine-tuning.
"""
import os
import sys

dependencies = ["torch", "torchvision"]

# torch.hub runs this file from a checkout or a downloaded archive where resnext is usually not installed:
# import the package from the src/ folder beside this file (an already imported resnext is kept).
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
sys.path.insert(0, _SRC)
try:
    from resnext import models as _models
    from resnext import weights as _weights
finally:
    sys.path.remove(_SRC)


def _entry_point(arch):
    def build(pretrained=False, **kwargs):
        model = _models.create_model(arch, **kwargs)
        if pretrained:
            source = _weights.default_source(arch) if pretrained is True else _weights.get_source(pretrained)
            _weights.load_weights(model, f"pretrained:{source.name}",
                                  ignore_head=model.num_classes != source.num_classes)
        return model

    build.__name__ = arch
    build.__doc__ = (f"{arch}: pretrained=False | True | a source name (resnext.weights.PRETRAINED); "
                     "keyword arguments go to resnext.create_model.")
    return build


# Only the architectures are public names here: torch.hub.list() shows every public callable.
for _arch in _models.list_models():
    globals()[_arch] = _entry_point(_arch)
