"""Shared test helpers: small simulated movies and the R^2 measure."""
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'


def r_squared(estimate, truth, mask=None):
    """Squared Pearson correlation between two maps (over ``mask`` if given)."""
    a = np.asarray(estimate, dtype=float)
    b = np.asarray(truth, dtype=float)
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1] ** 2)
