"""One module per method (or family). Importing this package registers every method.

A new method joins the library — and the generic property suite — by adding a module here that
defines a :class:`peftatlas.core.method.LayerAdapter` subclass decorated with ``@register(name)``.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
