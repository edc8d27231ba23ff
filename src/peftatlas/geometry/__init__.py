"""Geometry probes on weight updates, each against a null model.

Every PEFT method claims something about where the fine-tuning update ``ΔW = W' − W0`` of a linear
layer lives: a low-rank subspace, a rotation of the neurons, W0's principal or minor directions, a
circulant/Toeplitz/Kronecker/Fourier-sparse structure, a shared random basis with gains, ... This
package measures each claim on a given ``ΔW`` (usually full fine-tuning's) and always beside the same
measurement on null matrices that destroy the claimed structure (:mod:`.nulls`).
"""

from ._linalg import GeometryError
from .alignment import w0_alignment
from .fits import (
    Fit,
    budget_fitters,
    fit_circulant,
    fit_col_gains,
    fit_fourier,
    fit_kronecker,
    fit_low_rank,
    fit_row_gains,
    fit_toeplitz,
    fit_vera,
)
from .nulls import NullTest, gaussian, null_test, permuted, spectrum_matched
from .probe import ProbeRow, probe_matrix, probe_pair
from .rotation import (
    hyperspherical_energy,
    magnitude_direction,
    magnitude_direction_correlation,
    rotation_summary,
)
from .spectra import (
    effective_rank,
    energy_top_k,
    rank_at_energy,
    seed_consistent_rank,
    singular_values,
    spectrum_summary,
    stable_rank,
    subspace_overlap,
)

__all__ = [
    "Fit",
    "GeometryError",
    "NullTest",
    "ProbeRow",
    "budget_fitters",
    "effective_rank",
    "energy_top_k",
    "fit_circulant",
    "fit_col_gains",
    "fit_fourier",
    "fit_kronecker",
    "fit_low_rank",
    "fit_row_gains",
    "fit_toeplitz",
    "fit_vera",
    "gaussian",
    "hyperspherical_energy",
    "magnitude_direction",
    "magnitude_direction_correlation",
    "null_test",
    "permuted",
    "probe_matrix",
    "probe_pair",
    "rank_at_energy",
    "rotation_summary",
    "seed_consistent_rank",
    "singular_values",
    "spectrum_matched",
    "spectrum_summary",
    "stable_rank",
    "subspace_overlap",
    "w0_alignment",
]
