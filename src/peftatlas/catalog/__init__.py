"""The catalog as data: every method of the atlas as a falsifiable hypothesis with its sources.

``ENTRIES`` lists one :class:`Entry` per method family member of the design brief (references,
low rank, random subspaces, structured full rank, rotations, SVD basis, direction/strength,
activations, input space, architecture). Each maps to the registered method names that implement it
(:func:`registration`), so a reader can go from a hypothesis to runnable code and back.

Literature-only grade (the seed catalog's point scale, :data:`SCALE`): a dimension is earned when the
method's own paper or an independent study shows it AND no independent comparison we know of
contradicts it; "widely adopted" is our judgement of use beyond the paper (a standard library default
or broad community use). Analytic refutations cap the grade at 1 point, failed independent
replications at 4 (:class:`Override`). These grades are provisional; the rubric
(:mod:`peftatlas.grading`) replaces each dimension with a measured verdict where the store has data.

Sources: entries 1–30 of the research draft (read in full text or abstracts, tags FT/ABS/CODE/CALC)
and, for the methods it did not cover (RandLoRA, VB-LoRA, C3A, MiSS, SHiRA, OFTv2, BOFT, ETHER, RoAd,
SSVD, PSOFT, CLOVER, AntiPaSTO, DeLoRA, trainable tokens, Poly, X-LoRA), paper metadata and claims
partly from memory: every such claim was tagged ``MEM`` until it was read in the paper's abstract (tag ``ABS``;
all of them by 2026-12-04, docs/evidence.md lists what was read). A result-based mark (BL, BF, DE, OOD)
resting only on a MEM claim is not earned (:data:`UNVERIFIED`); :func:`validate` refuses an entry that
breaks this.
An equal-budget counter-result removes BL; OOD needs a shift between training and evaluation data.
"""

from __future__ import annotations

from ..core.method import MethodError, get_method, registered_methods
from .entries_function import ENTRIES as _FUNCTION
from .entries_lowrank import ENTRIES as _LOWRANK
from .entries_rotation import ENTRIES as _ROTATION
from .entries_structured import ENTRIES as _STRUCTURED
from .model import (
    DIMENSION_NAMES,
    MAX_POINTS,
    SCALE,
    UNVERIFIED,
    Claim,
    Entry,
    Family,
    Mark,
    Override,
    Paper,
    Prediction,
)

FAMILIES: tuple[Family, ...] = (
    Family("reference", "Reference & baselines", "The ceiling (every weight trains), the floor (only the head), and "
           "the smallest update that touches every layer (biases)."),
    Family("low-rank", "Low rank", "The fine-tuning update of each matrix has low intrinsic rank."),
    Family("random-subspace", "Random subspace + gains", "A fixed random basis with learned scalings is as good as "
           "a learned basis at a fraction of the parameters."),
    Family("structured-full-rank", "Structured unrestricted rank", "Rank is not the limit: structured full-rank "
           "updates (circulant, Toeplitz, Kronecker, Fourier-sparse, Hadamard, sparse) beat low rank per parameter."),
    Family("rotation", "Rotation", "Adaptation rotates the neurons of a layer, keeping their norms and pairwise "
           "angles (hyperspherical energy)."),
    Family("svd-basis", "SVD basis", "W0's own singular vectors are the natural coordinates of the update "
           "(principal, minor, or re-weighted)."),
    Family("direction-strength", "Direction vs strength", "How far the weights move and in which direction should "
           "be learned separately."),
    Family("activation", "Activations / gain control", "Adaptation rescales or edits activations channel-wise; "
           "the features already exist."),
    Family("input-space", "Input space", "The frozen model already computes the task; only its input context "
           "needs to move."),
    Family("architecture", "Architecture", "Small added modules (bottlenecks, shared factors, mixtures) placed at "
           "the right sites carry the adaptation."),
)
FAMILY_IDS = tuple(f.id for f in FAMILIES)

ENTRIES: tuple[Entry, ...] = tuple(_LOWRANK + _STRUCTURED + _ROTATION + _FUNCTION)
_BY_ID = {e.id: e for e in ENTRIES}


class CatalogError(ValueError):
    """Unknown entry or method name."""


def get_entry(entry_id: str) -> Entry:
    try:
        return _BY_ID[entry_id]
    except KeyError:
        raise CatalogError(f"unknown catalog entry {entry_id!r}; known: {', '.join(sorted(_BY_ID))}") from None


def registration(entry: Entry) -> dict[str, str | None]:
    """Each of the entry's method names → the registered name that implements it, or None."""
    known = set(registered_methods())
    out: dict[str, str | None] = {}
    for name in entry.methods:
        try:
            cls = get_method(name)
        except MethodError:
            out[name] = None
            continue
        out[name] = cls.name if cls.name in known else None
    return out


def registered_names(entry: Entry) -> list[str]:
    """The registered method names implementing ``entry`` (empty: not registered yet)."""
    return [n for n in registration(entry).values() if n]


def entry_for_method(method: str) -> Entry | None:
    """The catalog entry a registered method name belongs to (None if the catalog has none)."""
    for e in ENTRIES:
        if method in e.methods:
            return e
    try:
        name = get_method(method).name
    except MethodError:
        return None
    return next((e for e in ENTRIES if name in e.methods), None)


RESULT_DIMS = ("BL", "BF", "DE", "OOD")


def validate(entries: list[Entry]) -> None:
    """Raise :class:`CatalogError` for duplicate ids, unknown families, a method claimed by two entries, or a
    result-based mark (BL, BF, DE, OOD) earned by an entry whose headline is only remembered (tag MEM)."""
    ids = [e.id for e in entries]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CatalogError(f"duplicate catalog ids: {dup}")
    bad = sorted(e.id for e in entries if e.family not in FAMILY_IDS)
    if bad:
        raise CatalogError(f"entries with an unknown family: {bad}")
    owners: dict[str, str] = {}
    for e in entries:
        for m in e.methods:
            if m in owners and owners[m] != e.id:
                raise CatalogError(f"method {m!r} is claimed by entries {owners[m]} and {e.id}")
            owners.setdefault(m, e.id)
    unverified = sorted(e.id for e in entries if e.headline.tag == "MEM" and any(e.literature[d].earned
                                                                                for d in RESULT_DIMS))
    if unverified:
        raise CatalogError(f"entries earning a result-based mark from a MEM (unverified) headline: {unverified}")


validate(ENTRIES)

__all__ = [
    "DIMENSION_NAMES",
    "ENTRIES",
    "FAMILIES",
    "FAMILY_IDS",
    "MAX_POINTS",
    "RESULT_DIMS",
    "SCALE",
    "UNVERIFIED",
    "CatalogError",
    "Claim",
    "Entry",
    "Family",
    "Mark",
    "Override",
    "Paper",
    "Prediction",
    "entry_for_method",
    "get_entry",
    "registered_names",
    "registration",
    "validate",
]
