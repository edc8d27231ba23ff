"""Structured-matrix kernels shared by methods and probes.

Every fast product acts on the last dimension of its input (rows are tokens) and has an explicit
dense constructor beside it, used as the test oracle. Nothing here owns parameters.

* :mod:`.fft` — circulant, skew-circulant, rectangular Toeplitz (FFT embedding), low displacement rank;
* :mod:`.kronecker` — ``(B ⊗ A) x`` by the reshape trick, never materialising ``B ⊗ A``;
* :mod:`.givens` — GOFT's binary tree of Givens (or free 2×2) blocks, applied level by level;
* :mod:`.projections` — nearest matrix in each family (the closed-form optimal approximations).
"""

from .fft import (
    circulant_dense,
    circulant_matvec,
    good_fft_size,
    ldr_dense,
    ldr_matvec,
    skew_circulant_dense,
    skew_circulant_matvec,
    toeplitz_dense,
    toeplitz_matvec,
)
from .givens import (
    givens_rotation_apply,
    givens_tree_apply,
    givens_tree_dense,
    givens_tree_level_sizes,
    givens_tree_pairs,
    rotation_blocks,
)
from .kronecker import kron_dense, kron_matvec
from .projections import (
    block_procrustes,
    nearest_circulant,
    nearest_kronecker,
    nearest_low_rank,
    nearest_toeplitz,
    procrustes,
)

__all__ = [
    "block_procrustes",
    "circulant_dense",
    "circulant_matvec",
    "givens_rotation_apply",
    "givens_tree_apply",
    "givens_tree_dense",
    "givens_tree_level_sizes",
    "givens_tree_pairs",
    "good_fft_size",
    "kron_dense",
    "kron_matvec",
    "ldr_dense",
    "ldr_matvec",
    "nearest_circulant",
    "nearest_kronecker",
    "nearest_low_rank",
    "nearest_toeplitz",
    "procrustes",
    "rotation_blocks",
    "skew_circulant_dense",
    "skew_circulant_matvec",
    "toeplitz_dense",
    "toeplitz_matvec",
]
