"""The movies' gain reference as a run uses it: read once, turned, copied when changed.

The user's file is never written. The reference as used (turned as asked,
a correction of mean 1, unusable pixels set to 1) is copied to
``extra/gain_reference.mrc`` when it differs from the file;
``extra/gain_reference.json`` says what was read and which file is used.
After the orientation check, ``extra/oriented_gain.mrc`` is the reference in
use. :func:`reference_file` is the one decision of which file that is, for the
movie jobs, the output movies and the report; :func:`decide_orientation` the
orientation check (extra/orientation.json: its presence means decided). No
pyworkflow import.
"""
import os

import numpy as np

from ..estimator import EstimatorSettings, estimate_gain
from ..estimator.orientation import apply_orientation, find_orientation
from ..io import InputError, format_conventions, read_gain_reference, read_image, reader_class
from ..io.mrc import write_mrc
from ..io.results import write_json
from .logs import read_json


def prepare_reference(layout, source, transform, say=print, convention='auto'):
    """The movies' gain as used (float32), from the run folder's copy when there is one,
    else read from ``source`` (one read, as ``convention`` says: io.read_gain_reference)
    and turned by ``transform`` (an orientation.Transform); writes the copy and
    gain_reference.json. ``say`` gets one line per note."""
    if os.path.exists(layout.reference_copy):
        return np.ascontiguousarray(read_image(layout.reference_copy)[0], dtype=np.float32)
    source = os.path.abspath(source)
    try:
        stored = read_image(source)
        gain, notes = read_gain_reference(source, convention=convention, stored=stored)
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


# ------------------------------------------------------------------ orientation
def orient_reference(movie_paths, reference, frame_step=1, frames_per_movie=0, device='cpu'):
    """(OrientationResult, oriented map or None, frames used).

    Frames: every ``frame_step``-th, or ``frames_per_movie`` of each movie
    (:class:`EstimatorSettings`).

    The movies' gain is estimated without the reference (inverse per-pixel
    mean) and the 8 rotations/flips of ``reference``, direct and inverted, are
    compared with it. The oriented map (a correction, mean 1) is returned when
    the match is confident and changes something: not the identity, or inverted.
    """
    result = estimate_gain(list(movie_paths),
                           EstimatorSettings(method='mean', frame_step=frame_step,
                                             frames_per_movie=frames_per_movie),
                           device=device)
    found = find_orientation(result.gain, reference, valid=~result.defects)
    oriented = None
    if found.confident and (not found.transform.is_identity or found.inverted):
        oriented = apply_orientation(np.asarray(reference), found)
    return found, oriented, result.frames


def decide_orientation(layout, movies, reference, frame_step=1, frames_per_movie=0,
                       device='cpu'):
    """Decide the orientation of ``reference`` from ``movies`` and record it: (decision,
    [(level, line)]) with level 'info' or 'warning'.

    A confident match that changes the reference writes extra/oriented_gain.mrc
    (``decision['oriented']`` names it); gain_reference.json gets the
    orientation; extra/orientation.json, written last, marks the decision taken.
    A check that cannot be made leaves the reference as it is.
    """
    decision = {'movies': list(movies), 'oriented': None}
    try:
        found, oriented, frames = orient_reference(movies, reference, frame_step,
                                                   frames_per_movie, device=device)
    except (InputError, ValueError) as exc:
        decision['error'] = str(exc).splitlines()[0]
        write_json(layout.orientation, decision)
        return decision, [('warning', 'Gain orientation could not be checked (%s): the '
                                      'movies\' gain is used as it is.' % decision['error'])]
    decision['orientation'] = found.to_dict()
    decision['frames'] = int(frames)
    t = found.transform
    what = 'Gain orientation (%d movies, %d frames): %s' % (len(movies), frames, found.message)
    if not found.confident:
        lines = [('info', what + '. The movies\' gain is used as it is.')]
    elif oriented is None:
        lines = [('info', what + '. The movies\' gain is already in the movies\' orientation.')]
    else:
        path = layout.oriented_reference
        write_mrc(path, oriented, label='scipion-gain oriented reference (%s%s); multiplies '
                                        'raw frames; mean 1'
                                        % (t.motioncor2, ', 1/x' if found.inverted else ''))
        decision['oriented'] = os.path.abspath(path)
        lines = [('info', what),
                 ('info', 'The movies\' gain needs MotionCor2 %s, RELION %s%s. The oriented '
                          'reference %s is used from now on.'
                          % (t.motioncor2, t.relion,
                             ' and is stored inverted (1/x), which neither can undo'
                             if found.inverted else '', path))]
    info = read_json(layout.reference_info) if os.path.exists(layout.reference_info) else {}
    info.update(orientation=decision['orientation'], oriented=decision['oriented'])
    write_json(layout.reference_info, info)
    write_json(layout.orientation, decision)  # last: marks the decision taken
    return decision, lines
