"""The dose, measured from the data's own noise rather than assumed from its values.

The verdict's unit is the DQE a reference costs at the movie's dose
(:func:`.verdict.dqe_loss`), so the dose must be the electrons per pixel the
data hold, not what their values would be if they were counts. Values are
counts only when their noise says so: Poisson counts have a variance equal to
their mean. Micrographs written in ADU (an EPU K2 sum: about 100 ADU per
electron), counts scaled before storage, integrating frames, super-resolution
sums binned by averaging and gain-normalised sums are not counts.

Two measurements, both of the variance per unit mean (ADU per shot-noise
equivalent electron, ``k``; 1 for counts):

* frames (at least :data:`.stages.integrating.MIN_FRAMES`): photon transfer, the
  temporal variance of each pixel against its mean
  (:class:`.stages.integrating.PhotonTransfer`);
* one summed micrograph (or too few frames): the high-frequency spatial
  variance against the local mean (:func:`spatial_transfer`). Shot noise is
  white; the specimen, the illumination and the detector's line patterns are
  not, and the filter used sees none of them.

The electrons are then the mean over ``k``; whole-number values whose
``k`` is within a factor 2 of 1 are counts and keep their values; other
values with such a ``k`` are electrons already (gain-normalised counts). A
note says when the values are not in electrons.
"""
import numpy as np

from .filters import binned
from .statistics import significant

#: tiles of this many pixels a side: the median over them leaves edges and hot pixels out
TILE = 32
#: whole-number values are counts when their variance per unit mean is within this range
COUNTS_RANGE = (0.5, 2.0)
#: white noise gives the same variance per unit mean binned 2 x 2 and 4 x 4; beyond this
#: factor the image was filtered (simulated crowded specimens with carbon: within 1.04;
#: a real dose-weighted, motion-corrected K2 sum: 1.29 and 2.08)
MAX_COLOUR = 1.3


def spatial_transfer(image, tile=TILE):
    """Variance per unit mean (``k``, ADU per electron) from one image's high frequencies.

    The filter ``d = (x[i,j] - x[i+1,j] - x[i,j+1] + x[i+1,j+1]) / 2`` gives
    white noise of variance ``v`` the variance ``v`` and removes anything
    constant along a row or a column (line patterns, steps between sectors)
    and, nearly, anything smooth (specimen, ice, illumination). Per tile of
    ``tile`` x ``tile`` pixels, the mean of ``d^2`` over the mean level is
    ``k`` for shot noise (variance ``k`` x mean); the median over the tiles
    leaves out the few that hold a carbon edge or a hot pixel.

    Shot noise is white: the image binned 2 x 2 and 4 x 4 (sums) must give the
    same ``k``. An image whose ``k`` changes with the scale by more than
    :data:`MAX_COLOUR` was filtered (motion-corrected by interpolation,
    dose-weighted, binned in Fourier space) or is dominated by its specimen:
    its noise says nothing about its electrons (``adu_per_electron`` None).
    Returns a dict: ``adu_per_electron``, ``error`` (relative standard error,
    from the tiles' spread), ``tiles``, ``scales`` (``k`` binned 2 and 4 over
    ``k``), or ``reason``. A pixel-to-pixel pattern (an uncorrected sum's gain
    texture, a wrong reference's) adds to ``k``: the electrons are then
    underestimated.
    """
    x = np.asarray(image, dtype=np.float64)
    found = _high_frequency_ratio(x, tile)
    if found is None:
        return {'adu_per_electron': None, 'reason': 'too small, or no positive level'}
    k, error, tiles = found
    if not k > 0:
        return {'adu_per_electron': None, 'reason': 'no high-frequency noise'}
    scales = []
    for factor in (2, 4):
        coarse = _high_frequency_ratio(binned(x, factor), tile // factor)
        scales.append(None if coarse is None else _round(coarse[0] / k, 3))
    if any(s is None or not 1.0 / MAX_COLOUR < s < MAX_COLOUR for s in scales):
        return {'adu_per_electron': None, 'scales': scales,
                'reason': 'the noise is not white (binned 2 x 2 and 4 x 4 it gives '
                          f'{scales} times the variance per unit mean): a filtered image '
                          '(motion-corrected, dose-weighted) or one dominated by its specimen'}
    return {'adu_per_electron': k, 'error': error, 'tiles': tiles, 'scales': scales}


def _high_frequency_ratio(x, tile):
    """(median over tiles of mean(d^2) / mean level, its relative error, tiles) or None."""
    rows, cols = (x.shape[0] - 1) // tile * tile, (x.shape[1] - 1) // tile * tile
    if tile < 2 or rows < tile or cols < tile:
        return None
    power = np.empty((rows // tile, cols // tile))
    mean = np.empty_like(power)
    # one band of tiles at a time, in one working block (a 4K float64 image is 134 MB a
    # copy; a band stays in cache): the same values, tile by tile, as on the whole image
    work = np.empty((tile, cols))
    for band in range(rows // tile):
        top = band * tile
        a, b = x[top:top + tile, :cols], x[top + 1:top + tile + 1, :cols]
        c, d = x[top:top + tile, 1:cols + 1], x[top + 1:top + tile + 1, 1:cols + 1]
        np.subtract(a, b, out=work)
        work -= c
        work += d
        work *= work
        power[band] = _tile_means(work, tile)
        np.add(a, b, out=work)
        work += c
        work += d
        mean[band] = _tile_means(work, tile)
    power = power.ravel() / 4.0
    mean = mean.ravel() / 4.0
    good = np.isfinite(power) & np.isfinite(mean) & (mean > 0)
    if good.sum() < 4:
        return None
    ratio = power[good] / mean[good]
    k = float(np.median(ratio))
    spread = 1.4826 * float(np.median(np.abs(ratio - k)))
    return k, (1.2533 * spread / np.sqrt(ratio.size) / k if k > 0 else None), int(ratio.size)


def _tile_means(band, tile):
    """Mean of each ``tile`` x ``tile`` tile of a band of ``tile`` rows (float64)."""
    return band.reshape(1, tile, band.shape[1] // tile, tile).mean(axis=(1, 3),
                                                                   dtype=np.float64)[0]


def measured_dose(stage, frame_sum=None, stated=None):
    """(the JSON's ``dose``, notes): the electrons per pixel and where they come from.

    ``stage``: the analysis's :class:`.stages.cleaning.Dose` stage (frame means, whether
    the values are whole numbers, photon transfer); ``frame_sum``: the sum of
    the frames as estimated (for one micrograph, the image); ``stated``: the
    camera's stated ADU per electron (``--adu-per-electron``), compared with
    the measurement. ``source`` is 'counts' (the values, their noise agreeing),
    'photon transfer' (frames) or 'high-frequency noise' (one image); the
    values' own reading stays in ``values_read_as_counts``.
    """
    if stage is None or not stage.means:
        return None, []
    total = float(sum(stage.means.values()))
    whole = bool(stage.counting)
    conversion = stage.conversion.result() if getattr(stage.conversion, 'finished', False) \
        else {}
    if conversion.get('measured'):
        electrons, source = stage.electrons_per_pixel(), stage.electrons_source()
        k, method = conversion['variance_slope_adu'], 'photon transfer'
        arrived = conversion.get('adu_per_electron')
    else:
        spatial = spatial_transfer(frame_sum) if frame_sum is not None else {}
        k, method, arrived = spatial.get('adu_per_electron'), 'high-frequency noise', None
        if k is None:
            electrons, source = stage.electrons_per_pixel(), stage.electrons_source()
            if not electrons and spatial.get('scales'):
                return None, [f"the dose is not known: the values are not counts and {spatial['reason']}; "
                              f"no DQE loss is given"]
        elif whole and COUNTS_RANGE[0] < k < COUNTS_RANGE[1]:
            electrons, source = total, 'counts'
        else:
            electrons, source = total / k, method
    if not electrons:
        return None, []
    in_electrons = k is not None and COUNTS_RANGE[0] < k < COUNTS_RANGE[1]
    out = {'electrons_per_pixel': float(electrons), 'source': source,
           'values': ('counts' if source == 'counts' else
                      'electrons, not whole counts' if in_electrons else 'not counts'),
           'adu_per_electron': _round(k), 'measured_by': method if k is not None else None}
    if arrived and source != 'counts':
        out['electrons_arrived_per_pixel'] = _round(electrons * k / arrived)
    if stated is not None and k is not None:
        out['stated_adu_per_electron'] = float(stated)
        out['measured_over_stated'] = _round(k / float(stated))
    notes = []
    if source != 'counts' and not in_electrons and (whole or method == 'high-frequency noise'):
        notes.append(f"the values are not counts: their noise ({method}) gives "
                     f"{k:.4g} ADU per electron, so the movie holds {electrons:.3g} e/px "
                     f"(read as counts, {total:.4g}); the DQE loss is given at {electrons:.3g} e/px")
        out['values_read_as_counts'] = _round(total)
    if stated is not None and method == 'high-frequency noise' and k is not None \
            and not 0.8 < k / float(stated) < 2.5:   # photon transfer says its own
        notes.append(f"the noise gives {k:.4g} ADU per electron, the stated conversion "
                     f"{float(stated):.4g}: the measured one is used")
    return out, notes


def _round(value, digits=6):
    return significant(value, digits) if value is not None else None
