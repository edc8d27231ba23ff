"""Interoperability with Hugging Face PEFT's on-disk adapter format.

    from peftatlas.interop import export_peft, import_peft
    export_peft(model, "out/peft-lora")             # adapter_config.json + adapter_model.safetensors
    peft_model = PeftModel.from_pretrained(base, "out/peft-lora")          # ... in HF PEFT
    model = import_peft(fresh_base, "hf/peft-lora")  # a PEFT adapter as a peftatlas AdaptedModel

Every method both libraries have is convertible; a method joins by registering a
:class:`Converter` (see :mod:`peftatlas.interop.registry`). ``peft`` itself is never imported.
"""

from .peft_format import export_peft, import_peft, peft_config_dict, read_peft_files
from .registry import Converter, InteropError, converter_for_method, converter_for_peft, converters, register_converter

__all__ = [
    "Converter",
    "InteropError",
    "converter_for_method",
    "converter_for_peft",
    "converters",
    "export_peft",
    "import_peft",
    "peft_config_dict",
    "read_peft_files",
    "register_converter",
]
