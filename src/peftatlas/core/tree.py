"""Module-tree helpers that see through adapter wrappers.

Users name modules as in their original model (``encoder.layer.0.attention.self.query``). After
injection a wrapper sits at that name and the original lives at ``<name>.base``; these helpers
keep the user's names stable whatever has been wrapped, including nested wrappers.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

WRAPPER_BASE = "base"
WRAPPER_ADAPTERS = "adapters"


def is_wrapper(module: nn.Module) -> bool:
    return getattr(module, "_peftatlas_wrapper", False)


def user_named_modules(root: nn.Module, unwrap: bool = True) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` pairs under the user's names; wrappers yield their base if ``unwrap``."""
    seen: set[int] = set()

    def rec(prefix: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        for child_name, child in module._modules.items():
            if child is None:
                continue
            if is_wrapper(module):
                if child_name == WRAPPER_ADAPTERS:
                    continue
                if child_name == WRAPPER_BASE:
                    yield from rec(prefix, child)
                    continue
            name = f"{prefix}.{child_name}" if prefix else child_name
            if id(child) in seen:
                continue
            seen.add(id(child))
            yield name, (child.base if unwrap and is_wrapper(child) else child)
            yield from rec(name, child)

    yield "", root
    yield from rec("", root)


def get_user_submodule(root: nn.Module, name: str, unwrap: bool = False) -> nn.Module:
    module = root
    for part in name.split(".") if name else []:
        if is_wrapper(module):
            module = module.base
        module = module._modules[part]
    return module.base if unwrap and is_wrapper(module) else module


def set_user_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = get_user_submodule(root, parent_name)
    if is_wrapper(parent):
        parent = parent.base
    setattr(parent, child, new)
