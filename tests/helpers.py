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


def specimen_movie(path, gain, spec, rng, frames, drift=0.3):
    """Write ``path``: ``frames`` counting frames at 1 e/px/frame of ``spec`` (a
    :class:`scipion_gain.simulate.Specimen`, rendered with ``rng``) through ``gain``,
    drifting ``drift`` px per frame. Returns the path as a str."""
    from scipion_gain.simulate import render_specimen, simulate_frames, write_movie
    shape = np.shape(gain)
    image = render_specimen(spec, shape, rng, margin=8)
    write_movie(str(path), simulate_frames(shape, frames, gain, dose=1.0, rng=rng,
                                           specimen=image.image, drift=drift),
                shape=shape, n_frames=frames)
    return str(path)
