"""Does a fresh run reproduce the shipped results? One interval per method.

The catalog profile trains on the quick profile's model, data and schedule, so each method the quick
profile runs has a shipped arm to compare with. For each fresh main-experiment arm, the shipped arm is
the one with the same model, task, method, budget label and hyperparameters (the same
:func:`~peftatlas.grading.evidence.hp_key`) and the same number of training steps. Then::

    D = acc(fresh) − acc(shipped)        mean test accuracy over seeds (and items)

is tested with :func:`~peftatlas.grading.stats.difference_test` in the crossed seeds × items model (both
arms were scored on the same test items, so the comparison is paired by item; Satterthwaite's t). The
two-sided ``1 − 2α`` (95%) interval of D decides::

    reproduces          the interval contains 0
    differs             the interval excludes 0 (5% of identical-distribution pairs, by construction;
                        ``tests/test_reproduce.py`` simulates it)
    too few seeds       an arm has < 2 seeds (no interval)
    other schedule      a shipped arm of the same configuration trained a different number of steps
    no shipped result   nothing shipped for this configuration (the catalog has not reached it yet)

Where the shipped results are (:func:`find_shipped`): ``--shipped FOLDER``; else the environment
variable ``PEFTATLAS_SHIPPED``; else ``results/catalog`` of the source checkout the package runs from
(a git clone, editable install). A wheel does not carry them (they grow with every catalog session);
without a folder the comparison says where to get one and is skipped.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .evidence import Arm, Evidence
from .stats import ALPHA, ContrastTest, Scores, difference_test

ENV = "PEFTATLAS_SHIPPED"
REPO_FOLDER = Path("results") / "catalog"
MISSING = ("no shipped results found: pass --shipped FOLDER (a folder with records.jsonl, e.g. results/catalog "
           f"of a git clone of peftatlas) or set {ENV}; the wheel does not include them")


def find_shipped(explicit: str | os.PathLike | None = None) -> Path | None:
    """The shipped results folder: ``explicit``, ``$PEFTATLAS_SHIPPED``, or the checkout's results/catalog."""
    from ..evidence.shipped import RECORDS

    if explicit is not None:
        return Path(explicit)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / REPO_FOLDER / RECORDS).is_file():
            return parent / REPO_FOLDER
    return None


@dataclasses.dataclass
class Reproduction:
    """One fresh arm against its shipped counterpart."""

    method: str
    budget: str | None
    status: str  # reproduces | differs | too few seeds | other schedule | no shipped result
    fresh_mean: float
    shipped_mean: float | None = None
    test: ContrastTest | None = None
    note: str = ""

    @property
    def text(self) -> str:
        if self.test is not None:
            return f"{self.status}: fresh − shipped = {self.test.fmt()}"
        return f"{self.status}" + (f" ({self.note})" if self.note else "")


def _signature(arm: Arm) -> tuple[str, str | None, str | None]:
    return arm.method, arm.budget, arm.hp


def compare_arm(fresh: Arm, shipped: list[Arm]) -> Reproduction:
    """Compare one fresh arm with the shipped arms of the same setting (module docstring)."""
    same = [a for a in shipped if _signature(a) == _signature(fresh)]
    fresh_scores = fresh.scores("test")
    mean = fresh_scores.mean if fresh_scores else float("nan")
    if not same:
        return Reproduction(fresh.method, fresh.budget, "no shipped result", mean)
    steps = [a for a in same if a.steps == fresh.steps]
    if not steps:
        return Reproduction(fresh.method, fresh.budget, "other schedule", mean, note=f"fresh {fresh.steps} steps, "
                            f"shipped {sorted({a.steps or 0 for a in same})}")
    other = max(steps, key=lambda a: len(a.records))
    other_scores = other.scores("test")
    if fresh_scores is None or other_scores is None or min(fresh_scores.n_seeds, other_scores.n_seeds) < 2:
        return Reproduction(fresh.method, fresh.budget, "too few seeds", mean,
                            other_scores.mean if other_scores else None,
                            note=f"fresh {len(fresh.records)}, shipped {len(other.records)}; an interval needs ≥ 2")
    status, t = decide(fresh_scores, other_scores)
    return Reproduction(fresh.method, fresh.budget, status, mean, other_scores.mean, t)


def decide(fresh: Scores, shipped: Scores) -> tuple[str, ContrastTest]:
    """"reproduces" when the two-sided 95% interval of ``acc(fresh) − acc(shipped)`` contains 0, else "differs"."""
    t = difference_test(fresh, shipped)
    return ("reproduces" if t.low <= 0.0 <= t.high else "differs"), t


def compare(fresh: Evidence, shipped: Evidence) -> list[Reproduction]:
    """Every main-experiment arm of the fresh evidence's primary setting against the shipped evidence."""
    setting = fresh.primary_setting()
    if setting is None:
        return []
    theirs = shipped.arms(setting)
    return [compare_arm(a, theirs) for a in fresh.arms(setting)]


def table(results: list[Reproduction]) -> str:
    """Plain-text table of :func:`compare`'s results."""
    level = f"{100 * (1 - 2 * ALPHA):.0f}%"
    lines = [f"reproduction of the shipped catalog results (fresh − shipped mean test accuracy, {level} interval):"]
    for r in results:
        label = r.method + (f" @{r.budget}" if r.budget else "")
        lines.append(f"  {label:<28} {r.text}")
    return "\n".join(lines)
