"""Which null tests a method's own update gets: the null predictions of the method's catalog entry.

A ``method`` probe job reads one method's trained ΔW. Its values (spectra, magnitude/direction) are
computed on every probed matrix; the null models — the same :func:`~peftatlas.geometry.probe.probe_matrix`
machinery as full fine-tuning's ``single`` job, at the same number of draws (100) — only where the
method's entry predicts something against a null, and only for those probe groups and null kinds, on a
fixed small number of matrices (``OWN_NULL_MATRICES``, spread over module kinds and depth: the ≥ 3 that
the equivalence test needs). That keeps a catalog sweep's method jobs to
``methods × 3 matrices × draws × (null kinds)`` probe evaluations of one group each.

Spectral statistics are never tested against a null here: the iid Gaussian null is passed by any decaying
spectrum, and the spectrum-keeping nulls cannot move a spectral statistic, so low-rank claims are stated as
thresholds (``kind="threshold"``) instead.
"""

from __future__ import annotations

import dataclasses

OWN_NULL_MATRICES = 3  # matrices of a method's own update that get null draws
NO_NULL_GROUPS = frozenset({"spectral", "magdir", "seed_rank"})  # statistics never tested against a null here


@dataclasses.dataclass(frozen=True)
class OwnNulls:
    """Probe groups and null kinds a method's own update is tested with."""

    groups: tuple[str, ...]
    nulls: tuple[str, ...]

    def key_fields(self) -> dict[str, list[str]]:
        return {"groups": list(self.groups), "nulls": list(self.nulls)}


def own_nulls(method: str) -> OwnNulls | None:
    """The null tests ``method``'s own update needs (None: its entry has no null prediction)."""
    from ..catalog import ENTRIES

    preds = [p for e in ENTRIES if method in e.methods for p in e.predictions
             if p.kind == "null" and p.null and p.probe not in NO_NULL_GROUPS]
    if not preds:
        return None
    return OwnNulls(tuple(sorted({p.probe for p in preds})), tuple(sorted({p.null for p in preds if p.null})))
