"""The optional compiled (numba) kernels: whether they run, and the fallback warning when they cannot.

Every metric has a numpy path and, where it pays, a numba one; they agree to rounding (tested). The
compiled kernels are defined at import when numba is installed; whether they *run* is asked at call time
through :func:`available` and :func:`use_numba`, so setting :data:`numba` here to ``None`` switches every
metric to its numpy path (what the tests of the numpy paths do).
"""

from __future__ import annotations

import warnings

try:  # compiled kernels (backend="numba", the default when installed); without it they fall back to numpy
    import numba
    from numba import types as _nbtypes
    from numba.core import cgutils as _cgutils
    from numba.extending import intrinsic as _intrinsic
    from numba.extending import overload as _overload
    from numba.np.arrayobj import make_array as _make_array
    from numba.np.arrayobj import populate_array as _populate_array
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None  # type: ignore[assignment]
    _nbtypes = _cgutils = _intrinsic = _overload = _make_array = _populate_array = None  # type: ignore[assignment]


def available() -> bool:
    """Whether the compiled kernels run (numba is installed and not switched off)."""
    return numba is not None


_NUMPY_FALLBACK_WARNED = False


def use_numba(backend: str) -> bool:
    """Resolve ``backend`` ("auto", "numba" or "numpy") to whether the compiled kernels run."""
    global _NUMPY_FALLBACK_WARNED
    if backend not in ("auto", "numba", "numpy"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
    if backend == "numpy":
        return False
    if available():
        return True
    if backend == "numba":
        raise ImportError("the compiled DTW needs numba: pip install numba (or pass backend='numpy')")
    if not _NUMPY_FALLBACK_WARNED:
        warnings.warn(
            "numba is not installed: DTW falls back to the numpy implementation, about 10x slower (over "
            "half an hour for FRDist on the REACT test set); pip install numba",
            RuntimeWarning,
            stacklevel=3,
        )
        _NUMPY_FALLBACK_WARNED = True
    return False
