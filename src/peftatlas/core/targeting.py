"""Choosing which modules of a model get an adapter.

``targets`` may be:

* ``"all-linear"`` — every ``nn.Linear`` except the output head / output embedding;
* a string — a regular expression that must match the *full* module name (``re.fullmatch``);
* a list of strings — each an exact module name or a name suffix (``"query"`` matches
  ``"encoder.layer.0.attention.self.query"``);
* ``"all"`` — every module of a supported type (used by parameter-selection methods).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from torch import nn

HEAD_NAMES = ("classifier", "score", "lm_head", "head", "qa_outputs")


class TargetError(ValueError):
    """No module matched, or a matched module cannot take this method."""


def _output_embedding_names(model: nn.Module) -> set[str]:
    getter = getattr(model, "get_output_embeddings", None)
    out = getter() if callable(getter) else None
    if out is None:
        return set()
    return {name for name, mod in model.named_modules() if mod is out}


def head_module_names(model: nn.Module, head: str | Sequence[str] | None) -> list[str]:
    """Resolve the task head: ``"auto"`` finds a top-level classifier/score module."""
    if head is None:
        return []
    names = dict(model.named_modules())
    if head == "auto":
        found = [n for n in names if n.split(".")[-1] in ("classifier", "score", "qa_outputs")]
        # keep the outermost ones (a RobertaClassificationHead named classifier has children)
        return [n for n in found if not any(n != o and n.startswith(o + ".") for o in found)]
    wanted = [head] if isinstance(head, str) else list(head)
    resolved = []
    for w in wanted:
        hits = [n for n in names if n == w or n.endswith("." + w)]
        if not hits:
            raise TargetError(f"head module {w!r} not found; top-level modules: {', '.join(_top(model))}")
        resolved.extend(hits)
    return resolved


def _top(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_children()]


def _excluded_by_head(name: str, heads: Iterable[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)


def match_targets(
    model: nn.Module,
    targets: str | Sequence[str],
    types: tuple[type[nn.Module], ...],
    heads: Sequence[str] = (),
    exclude: str | Sequence[str] | None = None,
    accept: Callable[[nn.Module], bool] | None = None,
) -> list[str]:
    """Names of modules selected by ``targets`` (in model order); raises :class:`TargetError`."""
    modules = dict(model.named_modules())
    skip = set(_output_embedding_names(model))
    candidates = [
        n for n, m in modules.items()
        if n and isinstance(m, types) and not _excluded_by_head(n, heads) and n not in skip
    ]
    if targets in ("all-linear", "all"):
        chosen = [n for n in candidates if n.split(".")[-1] not in HEAD_NAMES]
        if targets == "all":  # modules that own parameters directly
            chosen = [n for n in chosen if next(modules[n].parameters(recurse=False), None) is not None]
        if accept is not None:
            chosen = [n for n in chosen if accept(modules[n])]
    elif isinstance(targets, str):
        pattern = re.compile(targets)
        chosen = [n for n in modules if n and pattern.fullmatch(n)]
    else:
        wanted = list(targets)
        chosen = [n for n in modules if n and any(n == t or n.endswith("." + t) for t in wanted)]
        missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in chosen)]
        if missing and chosen:
            raise TargetError(
                f"target(s) {missing} matched no module; candidates: {_preview(candidates)}"
            )
    if exclude is not None:
        ex = [exclude] if isinstance(exclude, str) else list(exclude)
        chosen = [n for n in chosen if not any(re.fullmatch(e, n) or n.endswith("." + e) for e in ex)]
    chosen = [n for n in chosen if not _excluded_by_head(n, heads)]
    if not chosen:
        raise TargetError(
            f"targets {targets!r} matched no module of type "
            f"{'/'.join(t.__name__ for t in types)}; candidates: {_preview(candidates)}"
        )
    wrong = [n for n in chosen if not isinstance(modules[n], types) or (accept and not accept(modules[n]))]
    if wrong:
        kinds = ", ".join(f"{n} ({type(modules[n]).__name__})" for n in wrong[:5])
        raise TargetError(
            f"matched module(s) of unsupported type: {kinds}; this method adapts "
            f"{'/'.join(t.__name__ for t in types)} only"
        )
    return chosen


def _preview(names: list[str], limit: int = 12) -> str:
    if not names:
        return "(none)"
    # Show distinct suffixes first: that is what users type.
    suffixes = sorted({n.split(".")[-1] for n in names})
    shown = ", ".join(suffixes[:limit])
    more = f" (+{len(suffixes) - limit} more)" if len(suffixes) > limit else ""
    return f"{shown}{more} [{len(names)} modules, e.g. {names[0]}]"
