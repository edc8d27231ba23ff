"""Grades per setting, and whether a hypothesis holds in one setting and fails in another.

A *setting* is where runs were made: ``(model, task, profile)`` of the records (``profile`` is the
arena profile, e.g. ``quick`` or ``catalog``; records written before profiles were stored carry ``""``).
Each setting is graded on its own records only (:func:`restrict`), so seeds of two profiles or two
models are never pooled into one arm.

Across settings, each claim of an entry (a rubric dimension or a geometry prediction) gets one of::

    agree: holds      decided in ≥ 1 setting, every decided setting passed / supported it
    agree: fails      decided in ≥ 1 setting, every decided setting failed / contradicted it
    disagree          passed in one setting and failed in another ("holds on the encoder, fails on the LM")
    undecided         measured somewhere, decided nowhere (inconclusive / not significant)
    not measured      measured in no setting

"Decided" means a pass or a fail of the dimension's own test (a fail needs the interval wholly on the
wrong side), so an inconclusive setting never makes a disagreement.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .evidence import Evidence
from .rubric import MEASURED, Grade, grade_all

HOLDS = ("pass", "supported")
FAILS = ("fail", "contradicted")
UNDECIDED = ("inconclusive", "not significant")


@dataclasses.dataclass(frozen=True, order=True)
class SettingKey:
    """Where runs were made: model, task and arena profile."""

    model: str
    task: str
    profile: str

    @property
    def label(self) -> str:
        return f"{self.model} · {self.task} · {self.profile or 'no profile'}"


def setting_keys(ev: Evidence) -> list[SettingKey]:
    """Every (model, task, profile) with finished main-experiment runs, sorted."""
    return sorted({SettingKey(r.model, r.task, getattr(r, "profile", "") or "") for r in ev.done()})


def primary_key(ev: Evidence, by_setting: dict[SettingKey, list[Grade]] | None = None) -> SettingKey | None:
    """The setting the index page grades: the one that grades the most entries (≥ 1 dimension measured),
    then the one with the most full fine-tuning seeds, then the first by name. ``by_setting``: the grades
    of every setting when already computed (:func:`grades_by_setting`)."""
    keys = setting_keys(ev)
    if not keys:
        return None
    by_setting = grades_by_setting(ev) if by_setting is None else by_setting

    def graded(k: SettingKey) -> int:
        return sum(g.outcome == "graded" for g in by_setting.get(k, []))

    def full_seeds(k: SettingKey) -> int:
        return len({r.seed for r in restrict(ev, k).done() if r.method == "full"})

    return min(keys, key=lambda k: (-graded(k), -full_seeds(k), k))


def restrict(ev: Evidence, key: SettingKey) -> Evidence:
    """The evidence of one setting: its records (every experiment) and the probe jobs made from them.

    A probe job belongs to the setting when every run it read is one of the setting's records; when the
    (model, task) was run under one profile only, every job of that (model, task) belongs to it."""
    records = [r for r in ev.records if (r.model, r.task, getattr(r, "profile", "") or "") ==
               (key.model, key.task, key.profile)]
    keys = {r.key for r in records}
    profiles = {getattr(r, "profile", "") or "" for r in ev.records if (r.model, r.task) == (key.model, key.task)}
    jobs = [j for j in ev.jobs if (j.model, j.task) == (key.model, key.task)
            and (len(profiles) <= 1 or set(j.run_keys) <= keys)]
    return Evidence(ev.path, records, jobs, {j.job_key: ev.rows.get(j.job_key, []) for j in jobs})


def grades_by_setting(ev: Evidence) -> dict[SettingKey, list[Grade]]:
    """Every setting's grades (the rubric run on that setting's records alone)."""
    return {k: grade_all(restrict(ev, k)) for k in setting_keys(ev)}


def agreement(statuses: list[str]) -> str:
    """Cross-setting reading of one claim from its per-setting statuses (module docstring)."""
    holds = any(s in HOLDS for s in statuses)
    fails = any(s in FAILS for s in statuses)
    if holds and fails:
        return "disagree"
    if holds:
        return "agree: holds"
    if fails:
        return "agree: fails"
    return "undecided" if any(s in UNDECIDED for s in statuses) else "not measured"


@dataclasses.dataclass
class ClaimRow:
    """One claim of an entry across settings: its status in each setting and the agreement."""

    claim: str
    statuses: dict[SettingKey, str]

    @property
    def agreement(self) -> str:
        return agreement(list(self.statuses.values()))

    @property
    def decided(self) -> tuple[int, int]:
        """(settings that decided the claim, settings that measured it): "agree" from one decided setting of
        three is a weaker reading than from three of three, and the report says which."""
        measured = [s for s in self.statuses.values() if s in HOLDS + FAILS + UNDECIDED]
        return sum(s in HOLDS + FAILS for s in measured), len(measured)


def entry_grades(by_setting: dict[SettingKey, list[Grade]], entry_id: str, method: str | None = None
                 ) -> dict[SettingKey, Grade]:
    """The entry's grade in each setting (its first method's, or ``method``'s where several are registered)."""
    out: dict[SettingKey, Grade] = {}
    for key, grades in by_setting.items():
        mine = [g for g in grades if g.entry.id == entry_id and (method is None or g.method == method)]
        if mine:
            out[key] = mine[0]
    return out


def claim_rows(per_setting: dict[SettingKey, Grade]) -> list[ClaimRow]:
    """One row per rubric dimension and per geometry prediction of the entry, across its settings."""
    rows = [ClaimRow(dim, {k: g.verdicts[dim].status for k, g in per_setting.items()}) for dim in MEASURED]
    if per_setting:
        first = next(iter(per_setting.values()))
        for i, p in enumerate(first.entry.predictions):
            rows.append(ClaimRow(f"geometry: {p.meaning}", {k: g.geometry[i].status for k, g in per_setting.items()
                                                            if i < len(g.geometry)}))
    return rows


def overview(by_setting: dict[SettingKey, list[Grade]]) -> list[dict[str, Any]]:
    """Per entry: its grade in each setting and how many of its claims agree / disagree across settings."""
    from ..catalog import ENTRIES

    out = []
    for entry in ENTRIES:
        per = entry_grades(by_setting, entry.id)
        rows = claim_rows(per)
        counts = {a: sum(r.agreement == a for r in rows) for a in
                  ("agree: holds", "agree: fails", "disagree", "undecided", "not measured")}
        out.append({"entry": entry, "grades": per, "counts": counts})
    return out
