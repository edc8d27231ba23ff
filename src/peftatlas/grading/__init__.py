"""Grades computed from stored evidence by a written rubric, beside the literature-only grade.

See :mod:`peftatlas.grading.rubric` for the rules; :func:`grade_store` grades a results database.
"""

from .evidence import Arm, Evidence
from .rubric import RULES, GeometryVerdict, Grade, Verdict, grade_all, grade_method, grade_store
from .stats import Interval, bootstrap, gain_recovered, mean_difference

__all__ = [
    "RULES",
    "Arm",
    "Evidence",
    "GeometryVerdict",
    "Grade",
    "Interval",
    "Verdict",
    "bootstrap",
    "gain_recovered",
    "grade_all",
    "grade_method",
    "grade_store",
    "mean_difference",
]
