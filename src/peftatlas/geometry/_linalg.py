"""Small shared helpers: matrix conversion, seeded generators, Haar-random orthogonal matrices.

Every probe works in float64 numpy, whatever the source (torch tensor, fp16/bf16 weights, numpy),
so a probe's answer does not depend on the dtype the model was trained in. (One exception, on null
draws only: VeRA's ALS products run in float32, see :class:`peftatlas.geometry.fits.VeraCapture`.)

Factorizations (SVD, QR, least squares) run through ``torch.linalg`` in float64 with a bounded
number of threads (``PEFTATLAS_LINALG_THREADS``, default 1): the probes factor many small matrices,
where one thread is efficient, and multi-threaded LAPACK on a busy machine can be ten times slower.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class GeometryError(ValueError):
    """A probe was given a matrix it cannot work on (wrong rank, shape mismatch, NaN, ...)."""


def as_matrix(x: Any, name: str = "matrix") -> np.ndarray:
    """``x`` as a finite 2-D float64 array (torch tensors are detached and moved to CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").float().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise GeometryError(f"{name} must be 2-D, got shape {tuple(a.shape)}")
    if a.size == 0:
        raise GeometryError(f"{name} is empty (shape {tuple(a.shape)})")
    if not np.all(np.isfinite(a)):
        raise GeometryError(f"{name} contains NaN or Inf")
    return a


def same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise GeometryError(f"{what}: shapes differ, {a.shape} vs {b.shape}")


def rng_of(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@contextlib.contextmanager
def linalg_threads() -> Iterator[None]:
    """Run torch factorizations with ``PEFTATLAS_LINALG_THREADS`` threads, restoring the old count."""
    old = torch.get_num_threads()
    want = max(1, int(os.environ.get("PEFTATLAS_LINALG_THREADS", "1")))
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def to_torch(m: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64))


def thin_svd(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``U, σ, Vᵀ`` with ``min(d_out, d_in)`` components, σ descending."""
    with linalg_threads():
        u, s, vt = torch.linalg.svd(to_torch(m), full_matrices=False)
    return u.numpy(), s.numpy(), vt.numpy()


class Factored(np.ndarray):
    """A matrix that carries its own thin SVD ``svd = (U, σ, Vᵀ)`` (σ descending), exact by construction.

    Null draws are built from known factors (``P U Σ (Q V)ᵀ`` for ``perm``, ``Ũ Σ Ṽᵀ`` for ``spec``), so
    :func:`svdvals` and :func:`top_svd` read them instead of factoring the draw again. The factors are
    dropped by every derived array (slices, transposes, products): only the object built by
    :func:`factored` has them, so a stale factorization cannot leak into another matrix.
    """

    svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None

    def __array_finalize__(self, obj: Any) -> None:
        self.svd = None


def factored(u: np.ndarray, s: np.ndarray, vt: np.ndarray, matrix: np.ndarray | None = None) -> Factored:
    """``U diag(σ) Vᵀ`` (or the given ``matrix`` equal to it) as a :class:`Factored` remembering ``(U, σ, Vᵀ)``."""
    out = np.asarray((u * s[None, :]) @ vt if matrix is None else matrix).view(Factored)
    out.svd = (u, s, vt)
    return out


def known_svd(m: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The exact thin SVD carried by a :class:`Factored` matrix, else ``None``."""
    return getattr(m, "svd", None) if isinstance(m, Factored) else None


def svdvals(m: np.ndarray) -> np.ndarray:
    """Singular values, descending, from the eigenvalues of the smaller Gram matrix.

    σ² comes out with absolute error ~ eps·σ₁², which is what every energy statistic needs, at a
    fraction of an SVD's cost on rectangular matrices. A :class:`Factored` matrix returns its own σ.
    """
    known = known_svd(m)
    if known is not None:
        return known[1].copy()
    with linalg_threads():
        t = to_torch(m)
        g = t @ t.T if t.shape[0] <= t.shape[1] else t.T @ t
        lam = torch.linalg.eigvalsh(g).clamp_min(0.0)
    return np.sqrt(lam.numpy()[::-1].copy())


def top_svd(m: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-``k`` singular triplets ``U_k, σ_k, V_kᵀ`` from an eigendecomposition of the smaller Gram.

    The other side's vectors are recovered as ``mᵀ U_k / σ_k`` (rows with σ = 0 are left zero). A
    :class:`Factored` matrix returns the leading ``k`` of its own factors (equal up to rounding and, for
    repeated or zero σ, the usual freedom of basis within the eigenspace).
    """
    known = known_svd(m)
    if known is not None:
        u, s, vt = known
        k = max(1, min(k, s.size))
        return u[:, :k].copy(), s[:k].copy(), vt[:k].copy()
    with linalg_threads():
        t = to_torch(m)
        k = max(1, min(k, min(t.shape)))
        wide = t.shape[0] <= t.shape[1]
        lam, vec = torch.linalg.eigh(t @ t.T if wide else t.T @ t)
        lam, vec = lam.flip(0)[:k].clamp_min(0.0), vec.flip(1)[:, :k]
        sig = lam.sqrt()
        inv = torch.where(sig > 0, 1.0 / sig.clamp_min(1e-300), torch.zeros_like(sig))
        if wide:
            u, vt = vec, (vec.T @ t) * inv[:, None]
        else:
            u, vt = (t @ vec) * inv[None, :], vec.T
    return u.numpy(), sig.numpy(), vt.numpy()


def polar_rows(c: np.ndarray, rcond: float = 1e-12) -> np.ndarray:
    """The orthogonal polar factor ``Uc Vcᵀ`` of a wide matrix ``c = Uc Σ Vcᵀ``, as ``(c cᵀ)^{-1/2} c``.

    Directions with ``σ² ≤ rcond·σ₁²`` are dropped (the factor is not unique there).
    """
    with linalg_threads():
        t = to_torch(c)
        lam, e = torch.linalg.eigh(t @ t.T)
        keep = lam > rcond * float(lam.max().clamp_min(1e-300))
        e, lam = e[:, keep], lam[keep]
        return (((e / lam.sqrt()[None, :]) @ e.T) @ t).numpy()


def haar_orthonormal(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``n×k`` matrix with orthonormal columns, uniformly (Haar) distributed.

    QR of a Gaussian matrix with the signs of R's diagonal folded into Q (Mezzadri 2007), which
    makes the distribution exactly Haar rather than biased by the QR sign convention.
    """
    g = rng.standard_normal((n, k))
    with linalg_threads():
        q, r = torch.linalg.qr(to_torch(g))
    return q.numpy() * np.sign(np.diag(r.numpy()))[None, :]


def frob2(m: np.ndarray) -> float:
    return float(np.sum(m * m))


def rel_residual(target: np.ndarray, approx: np.ndarray) -> float:
    """``‖target − approx‖_F / ‖target‖_F`` (0 for a zero target approximated exactly)."""
    t = frob2(target)
    r = frob2(target - approx)
    if t == 0.0:
        return 0.0 if r == 0.0 else float("inf")
    return float(np.sqrt(r / t))
