"""The shape of a catalog entry: a PEFT method read as a falsifiable hypothesis about weight geometry.

Every entry holds the paper, the family, one falsifiable sentence, the pseudocode, the measurements
that test it, the paper's headline claim (with its table or section), counter-evidence, the
literature-only grade on the seed catalog's point scale, the geometric predictions the probes can
check, and any analytic override.

Verification tags on claims (as in the research notes): ``FT`` read in the full text, ``ABS`` read in
an abstract or landing page, ``CODE`` read in code, ``CALC`` checked numerically by us, ``MEM`` from
memory, not re-verified — treat as provisional.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

# The seed catalog's point scale (github.com/wassname/adapters_as_hypotheses): max 8.
SCALE: dict[str, float] = {"PE": 1.0, "BL": 1.0, "BF": 1.5, "DE": 1.5, "OOD": 2.0, "WA": 1.0}
DIMENSION_NAMES: dict[str, str] = {
    "PE": "parameter-efficient",
    "BL": "beats LoRA",
    "BF": "beats full fine-tuning",
    "DE": "data-efficient",
    "OOD": "generalizes out of distribution",
    "WA": "widely adopted",
}
MAX_POINTS = sum(SCALE.values())
# A literature mark resting only on MEM-tagged claims is not earned until the claim is read in the paper.
UNVERIFIED = "not earned until verified from the paper: rests only on a MEM (unverified) claim"
# A self-reported win read in the abstract that names no equal parameter budget does not earn BL by itself.
ABSTRACT_ONLY = ("not earned from the abstract alone: it claims the win without stating an equal parameter budget, "
                 "and the result tables were not read here")

Tag = Literal["FT", "ABS", "CODE", "CALC", "MEM"]


@dataclasses.dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    venue: str
    year: int | None
    arxiv: str | None = None

    @property
    def url(self) -> str | None:
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else None

    def cite(self) -> str:
        venue = f"{self.venue} {self.year}" if self.year else self.venue
        arx = f", arXiv:{self.arxiv}" if self.arxiv else ""
        return f"{self.authors}. “{self.title}.” {venue}{arx}."


@dataclasses.dataclass(frozen=True)
class Claim:
    """A quoted or paraphrased result with where it comes from."""

    text: str
    source: str  # table / section / paper
    tag: Tag = "MEM"


@dataclasses.dataclass(frozen=True)
class Mark:
    """One literature-grade dimension: earned or not, and why (paper evidence weighed against counters)."""

    earned: bool
    why: str


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What the hypothesis predicts a geometry probe finds on full fine-tuning's update.

    ``kind="null"``: the median z-score over the selected matrices of ``probe/stat`` against ``null``
    has sign ``direction`` (+1 more structure than the null, −1 less, 0 no difference: |z| < 3).
    ``kind="threshold"``: the median value (divided by the matrix's ``d`` when ``per_d``) satisfies
    ``op`` ``value``. ``kind="magdir"``: the Pearson correlation of (ΔM, ΔD) over matrices of
    ``job_method``'s update has sign ``direction`` with a 95% bootstrap CI excluding 0.
    ``min_ratio`` (null kind, direction +1): also require median value ≥ ``min_ratio`` × median null
    mean — the practical threshold the research notes state (a large matrix makes tiny effects
    significant). ``matrices`` is a regular expression on module names (``None`` = all).
    ``on_own_update``: the prediction is also meaningful on the graded method's own update (its statistic
    is not fixed by the method's parametrization — a rank-r method's update is low-rank by construction,
    so a low-rank prediction is not); only such judgements, and magdir predictions on the graded method,
    move the measured grade. The others test the hypothesis on full fine-tuning's update (prevalence);
    on the method's own update they are shown as a positive control of the probe, never counted
    (docs/evidence.md, "Geometry predictions", lists which predictions are which and why).
    """

    kind: Literal["null", "threshold", "magdir"]
    meaning: str
    probe: str = ""
    stat: str = ""
    null: str | None = None
    direction: int = 1
    op: Literal["<=", ">="] = ">="
    value: float = 0.0
    per_d: bool = False
    aggregate: Literal["median", "cv"] = "median"
    matrices: str | None = None
    job_method: str = "full"
    min_ratio: float | None = None
    on_own_update: bool = False


@dataclasses.dataclass(frozen=True)
class Override:
    """An analytic refutation (``cap`` = 1 point) or a failed independent replication (``cap`` = 4)."""

    kind: Literal["analytic", "non-replication"]
    claim: str
    finding: str
    check: str
    cap: float


@dataclasses.dataclass(frozen=True)
class Entry:
    id: str
    name: str
    family: str
    methods: tuple[str, ...]  # registered method names that implement it (first = primary)
    paper: Paper
    hypothesis: str
    pseudocode: str
    measurements: tuple[str, ...]
    headline: Claim
    counter: tuple[Claim, ...]
    literature: dict[str, Mark]
    predictions: tuple[Prediction, ...] = ()
    override: Override | None = None
    graded: bool = True  # False for the references (full FT, head-only)
    notes: str = ""

    def __post_init__(self) -> None:
        for field in ("methods", "measurements", "counter", "predictions"):
            if not isinstance(getattr(self, field), tuple):
                raise ValueError(f"catalog entry {self.id}: {field} must be a tuple")
        missing = sorted(set(SCALE) - set(self.literature))
        extra = sorted(set(self.literature) - set(SCALE))
        if missing or extra:
            raise ValueError(f"catalog entry {self.id}: literature marks must be exactly {sorted(SCALE)}; "
                             f"missing {missing}, unexpected {extra}")

    @property
    def literature_points(self) -> float:
        """Literature-only grade: the earned dimensions' points, capped by an override."""
        pts = sum(SCALE[d] for d, m in self.literature.items() if m.earned)
        return min(pts, self.override.cap) if self.override else pts


def marks(pe: tuple[bool, str], bl: tuple[bool, str], bf: tuple[bool, str], de: tuple[bool, str],
          ood: tuple[bool, str], wa: tuple[bool, str]) -> dict[str, Mark]:
    """Compact constructor for the six literature marks, in scale order."""
    return {k: Mark(*v) for k, v in zip(SCALE, (pe, bl, bf, de, ood, wa))}


@dataclasses.dataclass(frozen=True)
class Family:
    id: str
    title: str
    claim: str  # the family's shared geometric claim, one sentence
