"""The movies' gain reference as a run uses it: read once, turned, copied when changed.

The user's file is never written. The reference as used (turned as asked,
a correction of mean 1, unusable pixels set to 1) is copied to
``extra/gain_reference.mrc`` when it differs from the file;
``extra/gain_reference.json`` says what was read and which file is used.
After the orientation check, ``extra/oriented_gain.mrc`` is the reference in
use. :func:`reference_file` is the one decision of which file that is, for the
movie jobs, the output movies and the report. No pyworkflow import.
"""
import os

import numpy as np

from ..io import InputError, format_conventions, read_gain_reference, read_image, reader_class
from ..io.mrc import write_mrc
from ..io.results import write_json
from .logs import read_json


def prepare_reference(layout, source, transform, say=print):
    """The movies' gain as used (float32), from the run folder's copy when there is one,
    else read from ``source`` (one read) and turned by ``transform`` (an
    orientation.Transform); writes the copy and gain_reference.json. ``say`` gets
    one line per note."""
    if os.path.exists(layout.reference_copy):
        return np.ascontiguousarray(read_image(layout.reference_copy)[0], dtype=np.float32)
    source = os.path.abspath(source)
    try:
        stored = read_image(source)
        gain, notes = read_gain_reference(source, stored=stored)
    except InputError as exc:
        raise InputError('movies\' gain reference: %s' % exc) from None
    if not transform.is_identity:
        gain = transform.apply(gain)
        notes.append('turned as asked: %s (MotionCor2 %s, RELION %s)'
                     % (transform.describe(), transform.motioncor2, transform.relion))
    for note in notes:
        say('Movies\' gain %s: %s' % (source, note))
    info = {'source': source, 'transform': transform.to_dict(), 'notes': notes}
    raw = stored[0]
    if gain.shape != raw.shape or not np.allclose(gain, raw, rtol=1e-5, atol=1e-6):
        # flipped, inverted, scaled to mean 1 or with unusable pixels set to 1: a new
        # file, never the user's
        write_mrc(layout.reference_copy, gain,
                  label='scipion-gain: movies gain as used, %s, mean 1' % transform.motioncor2)
        info['used'] = os.path.abspath(layout.reference_copy)
        say('Movies\' gain as used written to %s' % layout.reference_copy)
    else:
        info['used'] = source
    write_json(layout.reference_info, info)
    return np.ascontiguousarray(gain, dtype=np.float32)


def reference_file(layout, oriented=True):
    """(path, reader) of the reference in use, or None before it is known: the oriented
    reference (when ``oriented`` and the orientation check wrote one), the run's copy,
    or the file gain_reference.json names ('image': a file this run wrote, read as
    stored; 'gain_reference': the user's file, read as a gain reference)."""
    if oriented and os.path.exists(layout.oriented_reference):
        return layout.oriented_reference, 'image'
    if os.path.exists(layout.reference_copy):
        return layout.reference_copy, 'image'
    if os.path.exists(layout.reference_info):
        try:
            info = read_json(layout.reference_info)
        except (OSError, ValueError):
            return None
        used = info.get('used') or info.get('source')
        if used:
            return used, ('image' if os.path.abspath(used) in (
                os.path.abspath(layout.reference_copy),
                os.path.abspath(layout.oriented_reference)) else 'gain_reference')
    return None


def orientation_hint(movie_path, gain_path):
    """A hint when movies and gain are of formats that RELION and Xmipp read with
    different Y orientations (TIFF/EER vs MRC); this package reads both as stored."""
    try:
        flips = [format_conventions(reader_class(path))['relion_xmipp_flip_y']
                 for path in (movie_path, gain_path)]
    except Exception:
        return None
    if None in flips or flips[0] == flips[1]:
        return None
    flipped, stored = (movie_path, gain_path) if flips[0] else (gain_path, movie_path)
    return ('Note: RELION and Xmipp read %s files upside down and %s files as stored; '
            'this protocol reads both as stored. If the residual gains are flagged, '
            'try "Orientation of the gain reference: flip upside down (RotGain 0, '
            'FlipGain 1)", or the automatic orientation check.'
            % (os.path.splitext(flipped)[1], os.path.splitext(stored)[1]))
