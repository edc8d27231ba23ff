"""Grades computed from stored evidence by a written rubric, beside the literature-only grade.

See :mod:`peftatlas.grading.rubric` for the rules and :mod:`peftatlas.grading.stats` for the tests;
:func:`grade_store` grades a results database.
"""

from .evidence import Arm, Evidence
from .rubric import RULES, GeometryVerdict, Grade, Setting, Verdict, grade_all, grade_method, grade_store
from .settings import SettingKey, grades_by_setting
from .stats import ALPHA, MIN_SEEDS, ContrastTest, Scores, contrast_test, difference_test, gain_recovered, holm

__all__ = [
    "ALPHA",
    "MIN_SEEDS",
    "RULES",
    "Arm",
    "ContrastTest",
    "Evidence",
    "GeometryVerdict",
    "Grade",
    "Scores",
    "Setting",
    "SettingKey",
    "Verdict",
    "contrast_test",
    "difference_test",
    "gain_recovered",
    "grade_all",
    "grade_method",
    "grade_store",
    "grades_by_setting",
    "holm",
]
