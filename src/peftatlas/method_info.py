"""Everything about one method in one place: ``peftatlas.describe("lora")`` and ``peftatlas methods lora``.

The description joins what the code states (the ``Config`` dataclass: each hyperparameter's type,
default and meaning — from the field's ``metadata["help"]`` or the comment beside or above it —
the parameter-count formula, the layer types it adapts, mergeability) with what the catalog states
(the hypothesis, the pseudocode, the paper).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from typing import Any

from .core.method import LayerAdapter, MethodError, get_method, registered_methods


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    name: str
    type: str
    default: Any
    meaning: str


@dataclasses.dataclass(frozen=True)
class MethodDescription:
    """One method as the code and the catalog describe it."""

    name: str
    family: str
    summary: str
    hyperparameters: tuple[Hyperparameter, ...]
    formula: str  # trainable parameters per adapted layer
    layer_types: tuple[str, ...]
    mergeable: bool
    mixed_batch: bool
    noop_at_init: bool
    insertion: str
    hypothesis: str | None = None
    pseudocode: str | None = None
    paper: str | None = None
    paper_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe(name: str) -> MethodDescription:
    """The description of registered method ``name`` (:class:`MethodError` if there is none)."""
    from .catalog import entry_for_method

    cls = get_method(name)
    entry = entry_for_method(cls.name)
    return MethodDescription(
        name=cls.name,
        family=cls.family,
        summary=cls.summary,
        hyperparameters=hyperparameters(cls),
        formula=cls.formula,
        layer_types=layer_types(cls),
        mergeable=cls.mergeable,
        mixed_batch=cls.supports_mixed_batch,
        noop_at_init=cls.noop_at_init,
        insertion=cls.insertion,
        hypothesis=entry.hypothesis if entry else None,
        pseudocode=entry.pseudocode if entry else None,
        paper=entry.paper.cite() if entry else None,
        paper_url=entry.paper.url if entry else None,
    )


def families() -> list[str]:
    """The families of the registered methods, sorted."""
    return sorted({cls.family for cls in registered_methods().values()})


def resolve_family(family: str) -> str:
    """A family id from a user's spelling (``lowrank`` → ``low-rank``); one-line error listing valid ones."""
    def key(s: str) -> str:
        return re.sub(r"[-_ ]", "", s.lower())

    known = families()
    hit = next((f for f in known if key(f) == key(family)), None)
    if hit is None:
        raise MethodError(f"unknown family {family!r}; valid: {', '.join(known)}")
    return hit


def layer_types(cls: type[LayerAdapter]) -> tuple[str, ...]:
    """Names of the layer types the method adapts (``layer_types`` if the method states it)."""
    stated = getattr(cls, "layer_types", None) or getattr(cls, "target_types", None) or ("Linear",)
    return tuple(t if isinstance(t, str) else t.__name__ for t in stated)


# Meanings of names many methods share, used where the method's own Config says nothing.
COMMON_MEANINGS: dict[str, str] = {
    "r": "rank (or size) of the update",
    "alpha": "update scale; in LoRA-style methods the update is multiplied by alpha / r",
    "dropout": "dropout probability on the adapter's input during training",
    "rslora": "scale by alpha / sqrt(r) instead of alpha / r (rank-stabilised)",
    "block_size": "side of each diagonal block",
    "n_blocks": "number of diagonal blocks",
    "cayley": "how the Cayley transform is computed: exact solve or truncated Neumann series",
    "neumann_terms": "terms of the Neumann series when cayley is 'neumann'",
    "init_std": "standard deviation of the random initialisation",
    "activation": "nonlinearity inside the added module",
    "bottleneck": "hidden width of the added bottleneck module",
    "scaling": "multiplier applied to the update",
    "num_virtual_tokens": "number of trainable virtual tokens",
    "projection_seed": "seed that regenerates the frozen random projections (stored instead of them)",
}


# Meanings of one method's fields whose Config states none (method name → field → meaning), from
# the method's math; a method's own help / comment wins over these, these over COMMON_MEANINGS.
METHOD_MEANINGS: dict[str, dict[str, str]] = {
    "adalora": {
        "init_r": "initial rank r0 of every layer's triplets P diag(λ) Q, before the budget prunes them",
        "beta1": "EMA factor of the sensitivity: Ī ← β1·Ī + (1−β1)·|θ ⊙ ∇θ|",
        "beta2": "EMA factor of the uncertainty: Ū ← β2·Ū + (1−β2)·|I − Ī|",
        "orth_reg_weight": "γ: weight of the orthogonality penalty ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F added to the loss",
    },
    "antipasto": {
        "rotate_u": "train a Cayley rotation R_u of the top-r left (output-side) singular vectors",
        "rotate_v": "train a Cayley rotation R_v of the top-r right (input-side) singular vectors",
    },
    "dylora": {"r_min": "smallest truncation rank b drawn in training: b ~ Uniform{r_min, …, r}"},
    "ether_plus": {"two_sided": "also transform the output side: y = H'(W0 H x) + b with block maps H' on "
                                "the output (2·d_out more parameters)"},
    "fourierft": {
        "n_frequency": "number n of trained spectral coefficients (frozen random frequencies) per layer",
        "random_loc_seed": "seed that draws the frozen frequency locations (shared by layers of one shape)",
    },
    "molora": {"n_experts": "number K of LoRA experts mixed per token by the softmax router"},
    "poly": {
        "n_skills": "number K of LoRA skills in each layer's library",
        "n_tasks": "number T of tasks: rows of the routing logits Z, picked by task_ids",
    },
    "road": {
        "variant": "road_1: one (θ, α) per rotated pair; road_2: one per output coordinate; road_4: separate "
                   "(θ, α) for the cos and sin terms of each coordinate",
        "group_size": "outputs are rotated in runs of g: coordinate j of a run's first half pairs with j + g/2",
    },
    "trainable_tokens": {"token_indices": "vocabulary ids whose embedding rows train (a k × d delta)"},
    "vblora": {
        "num_vectors": "number N of vectors in the model-wide bank",
        "topk": "bank vectors mixed per length-L piece: softmax over the top-k logits",
        "init_logits_std": "standard deviation of the normal initialisation of the logits",
        "init_bank_bound": "bound b of the bank's uniform initialisation U(−b, b)",
        "bank_seed": "seed of the initial bank (regenerates the frozen initial product B₀A₀)",
    },
    "vera": {"d_init": "initial value of every entry of the rank-wise scaling vector d"},
}


def hyperparameters(cls: type[LayerAdapter]) -> tuple[Hyperparameter, ...]:
    """Each ``Config`` field: name, type, default and meaning (the field's own, the method's table, a common one)."""
    comments = _field_comments(cls.Config)
    try:
        hints = typing.get_type_hints(cls.Config)
    except Exception:  # an annotation that does not resolve: fall back to its text
        hints = {}
    out = []
    for f in dataclasses.fields(cls.Config):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        hint = hints.get(f.name, f.type)
        type_name = hint if isinstance(hint, str) else getattr(hint, "__name__", None) or str(hint)
        meaning = str(f.metadata.get("help") or f.metadata.get("doc") or comments.get(f.name)
                      or METHOD_MEANINGS.get(cls.name, {}).get(f.name) or COMMON_MEANINGS.get(f.name, ""))
        out.append(Hyperparameter(f.name, str(type_name).replace("typing.", ""), default, meaning))
    return tuple(out)


def _field_comments(config: type) -> dict[str, str]:
    """Field name → the comment on its line, else the comment lines right above it."""
    try:
        source = textwrap.dedent(inspect.getsource(config))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    inline: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                inline[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        return {}
    out: dict[str, str] = {}
    for i, line in enumerate(lines, start=1):
        m = re.match(r"\s+(\w+)\s*:", line)
        if not m or line.strip().startswith("#"):
            continue
        if i in inline:
            out[m.group(1)] = inline[i]
            continue
        above: list[str] = []
        j = i - 1
        while j >= 1 and lines[j - 1].strip().startswith("#"):
            above.insert(0, inline.get(j, ""))
            j -= 1
        if above:
            out[m.group(1)] = " ".join(above)
    return out


def render(d: MethodDescription) -> str:
    """A plain-text page for the terminal."""
    parts = [f"{d.name} — {d.family}", d.summary, ""]
    parts.append("hyperparameters:")
    if not d.hyperparameters:
        parts.append("  (none)")
    width = max((len(h.name) for h in d.hyperparameters), default=0)
    twidth = max((len(h.type) for h in d.hyperparameters), default=0)
    for h in d.hyperparameters:
        meaning = f"  {h.meaning}" if h.meaning else ""
        parts.append(f"  {h.name.ljust(width)}  {h.type.ljust(twidth)}  = {h.default!r}{meaning}")
    parts += [
        "",
        f"parameters per layer: {d.formula or '(not stated)'}",
        f"layer types:          {', '.join(d.layer_types)}",
        f"acts on:              {d.insertion}",
        f"mergeable:            {'yes' if d.mergeable else 'no'}",
        f"mixed-adapter batch:  {'yes' if d.mixed_batch else 'no'}",
        f"identity at init:     {'yes' if d.noop_at_init else 'no'}",
    ]
    if d.hypothesis is not None:
        parts += ["", "hypothesis:", textwrap.indent(textwrap.fill(d.hypothesis, 96), "  ")]
    if d.pseudocode:
        parts += ["", "pseudocode:", textwrap.indent(d.pseudocode.strip("\n"), "  ")]
    if d.paper:
        parts += ["", "paper:", f"  {d.paper}" + (f"  {d.paper_url}" if d.paper_url else "")]
    if d.hypothesis is None:
        parts += ["", "(no catalog entry: hypothesis, pseudocode and paper are not recorded)"]
    return "\n".join(parts)
