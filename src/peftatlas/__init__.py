"""peftatlas: parameter-efficient fine-tuning methods as measured hypotheses about weight geometry.

Quick use::

    import peftatlas as pa
    model = pa.attach(base_model, "lora", targets=["query", "value"], r=8)
    ...train model...
    pa.save_adapter(model, "out/lora")
    model = pa.load_adapter(fresh_base_model, "out/lora")
    model = pa.from_pretrained("path/to/base", "out/lora")     # base + adapter in one call
"""

__version__ = "0.1.0"

from .core.atomic import DestinationError
from .core.io import AdapterFileError, from_pretrained, load_adapter, save_adapter
from .core.layer import BASE_NAME, AdaptedModule, MergeError
from .core.method import LayerAdapter, MethodError, get_method, register, registered_methods
from .core.model import AdaptedModel, ParamCount, attach
from .core.targeting import TargetError
from .method_info import MethodDescription, describe


def __getattr__(name: str):
    if name == "AdapterTrainer":  # imports transformers' Trainer, so only when asked for
        from .trainer import AdapterTrainer

        return AdapterTrainer
    raise AttributeError(f"module 'peftatlas' has no attribute {name!r}")


__all__ = [
    "BASE_NAME",
    "AdaptedModel",
    "AdaptedModule",
    "AdapterFileError",
    "AdapterTrainer",
    "DestinationError",
    "LayerAdapter",
    "MergeError",
    "MethodDescription",
    "MethodError",
    "ParamCount",
    "TargetError",
    "__version__",
    "attach",
    "describe",
    "from_pretrained",
    "get_method",
    "load_adapter",
    "register",
    "registered_methods",
    "save_adapter",
]
