"""The run folder's text files: summary.txt, summaryForMonitor.txt, warnings.txt.

The summary line formats are Xmipp's movie gain formats; summary.txt lines may
carry extra columns after them (the report's parser matches the Xmipp part),
while summaryForMonitor.txt is the facilities monitor's contract and stays
exactly ``MONITOR_FORMAT``. Every line is about one movie and starts with its
label ``movie_%06d_...`` (:func:`~.layout.movie_id_of_label` reads the id back),
so that :class:`AppendOnce` can give each movie exactly once in each file, also
after a crash and a resume. No pyworkflow import.
"""
import json
import os

from ..estimator.verdict import paper_flag_reasons, verdict_of
from ..io.results import write_text
from .layout import movie_id_of_label

SUMMARY_FORMAT = ('%s: mean=%f std=%f [min=%f,max=%f] '
                  '2.5%%=%f 25%%=%f 50%%=%f 75%%=%f 97.5%%=%f')
MONITOR_FORMAT = '%s: %f %f %f %f\n'


def summary_line(label, statistics, extra=''):
    """One summary.txt line: the Xmipp fields, then ``extra`` (starting with a space)."""
    s = statistics
    return SUMMARY_FORMAT % (label, s['mean'], s['std'], s['min'], s['max'], s['p2.5'],
                             s['p25'], s['p50'], s['p75'], s['p97.5']) + extra + '\n'


def monitor_line(label, statistics):
    """One summaryForMonitor.txt line: 'label: std p2.5 p97.5 max'."""
    s = statistics
    return MONITOR_FORMAT % (label, s['std'], s['p2.5'], s['p97.5'], s['max'])


def movie_label(movie_id, report):
    """'movie_000007_residual': the label of a movie's summary lines."""
    return 'movie_%06d_%s' % (movie_id, report['kind'])


def summary_column(report):
    """The column appended to a summary.txt line: verdict=ok|flagged[...] dqe_loss=... noise=..."""
    if not report.get('assessment') and not report.get('verdict'):
        return ''
    verdict = verdict_of(report)
    state = ('flagged[%s]' % ','.join(_short(reason) for reason in verdict.reasons)
             if verdict.flagged else 'ok')
    loss = verdict.dqe_loss
    noise = (report.get('assessment') or {}).get('noise', {}).get('pixel_std', 0.0)
    return ' verdict=%s dqe_loss=%s noise=%f' % (
        state, ('%.4f%%' % (100 * loss)) if loss is not None else 'unknown', noise)


def _short(reason):
    return reason.split(' (')[0].replace(' ', '_')


def verdict_message(movie_id, report):
    """One warnings.txt / log line for a flagged movie: the verdict, then the paper's flags."""
    verdict = verdict_of(report)
    line = 'movie_%06d: %s flagged' % (movie_id, 'residual gain' if report.get('kind') == 'residual'
                                       else 'estimated gain')
    if report.get('movie_file'):
        line += ' (file %s)' % os.path.basename(report['movie_file'])
    line += ': %s' % verdict.sentence
    paper = ', '.join(paper_flag_reasons(report))
    return line + ('; paper\'s flags: %s' % paper if paper else '')


def offset_message(movie_id, report):
    """The warning for a movie whose frames carry an offset (input.offset), or None."""
    offset = (report.get('input') or {}).get('offset') or {}
    if not offset.get('detected'):
        return None
    if offset.get('relative_to') == 'dark reference':
        return ('movie_%06d: after the dark reference the frames still sit about %.0f ADU from '
                'the level of no electron: is it the right dark reference?'
                % (movie_id, offset['offset_adu']))
    return ('movie_%06d: frames carry an offset of about %.0f ADU: give the dark reference'
            % (movie_id, offset['offset_adu']))


def failed_message(movie_id, reason):
    """The warnings.txt line of a movie that could not be analysed."""
    return 'movie_%06d: could not be analysed: %s' % (movie_id, reason)


def camera_line(movie_id, report):
    """The summary's line about the camera's conversion (input.conversion), or None."""
    conversion = (report.get('input') or {}).get('conversion') or {}
    if not conversion.get('measured'):
        return None
    slope = conversion['variance_slope_adu']
    factor = conversion.get('adu_per_electron')
    if factor is None and 0.5 < slope < 2.0:
        return None  # counting frames
    parts = (['%.4g ADU per electron (spread %.2f)' % (factor, conversion['electron_spread'])]
             if factor is not None else [])
    parts.append('variance slope %.4g ADU' % slope)
    if conversion.get('read_noise_adu') is not None:
        parts.append('read noise %.3g ADU' % conversion['read_noise_adu'])
    parts.append('%.3g e/px per frame (shot-noise equivalent)'
                 % conversion['electrons_per_pixel_per_frame'])
    return 'Camera (photon transfer, movie %d): %s.' % (movie_id, ', '.join(parts))


def session_quality_line(report):
    """What the running estimate of a robust session is worth (its report's
    ``session_quality``: estimator.specimen.session_quality), one sentence, or None."""
    quality = (report or {}).get('session_quality')
    if not quality:
        return None
    line = ('Running estimate\'s noise (from the movies\' own): %.2f %% per column, %.2f %% '
            'per row, %.3g movies\' worth' % (100 * quality['column_noise'],
                                              100 * quality['row_noise'],
                                              quality['effective_movies']))
    if quality.get('down_weighted'):
        line += '; weighed down (their lines stand off the others\'): movies %s' % ', '.join(
            map(str, quality['down_weighted']))
    return line + '.'


def movie_lines(movie_id, report):
    """{file name: [lines]} that one analysed movie adds to the run's text files."""
    label = movie_label(movie_id, report)
    warnings = []
    if verdict_of(report).flagged:
        warnings.append(verdict_message(movie_id, report) + '\n')
    offset = offset_message(movie_id, report)
    if offset:
        warnings.append(offset + '\n')
    # the verdict's column comes after the Xmipp fields; the monitor file keeps exactly
    # Xmipp's format (the paper's statistics)
    return {'summary.txt': [summary_line(label, report['statistics'], summary_column(report))],
            'summaryForMonitor.txt': [monitor_line(label, report['statistics'])],
            'warnings.txt': warnings}


class AppendOnce:
    """Append lines to one text file, each at most once, also across a crash and a resume.

    ``by_movie``: a line is known by its movie id (summary files: one line per
    movie); else by its whole text (warnings.txt). What the file holds is read
    once; a last line without its newline (a write cut short) is dropped from
    the file first.
    """

    def __init__(self, path, by_movie=False):
        self.path = path
        self.by_movie = by_movie
        text = read_text(path, strip=False) if os.path.exists(path) else ''
        if text and not text.endswith('\n'):
            text = text[:text.rfind('\n') + 1]
            write_text(path, text)
        self.known = {self._key(line) for line in text.splitlines()} - {None}

    def _key(self, line):
        return movie_id_of_label(line) if self.by_movie else line.rstrip('\n')

    def __contains__(self, key):
        return key in self.known

    def append(self, lines):
        """Append the lines not known yet; True when something was written."""
        new = []
        for line in lines:
            key = self._key(line)
            if key in self.known:
                continue
            self.known.add(key)
            new.append(line)
        if new:
            with open(self.path, 'a') as handle:
                handle.write(''.join(new))
        return bool(new)


# ------------------------------------------------------------------ reading
def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def read_text(path, strip=True):
    with open(path) as handle:
        text = handle.read()
    return text.strip() if strip else text


def read_lines(path):
    """The lines of a text file without their newlines; [] when it does not exist."""
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.rstrip('\n') for line in handle]


# ------------------------------------------------------------------ the run's summary
def ranges(ids):
    """[1, 2, 3, 5] -> '1-3, 5'."""
    ids = sorted(set(int(i) for i in ids))
    if not ids:
        return 'none'
    parts, start, previous = [], ids[0], ids[0]
    for value in ids[1:] + [None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if value is not None:
            start = previous = value
    return ', '.join(parts)


def _some(ids, most=20):
    return ', '.join(map(str, ids[:most])) + (' ...' if len(ids) > most else '')


def movies_summary_lines(layout, conclusion_lines=()):
    """The protocol summary's lines on the analysed movies: how many were flagged (and
    ``conclusion_lines``, the report's conclusion), offsets, movies gain-corrected at
    acquisition, the camera's conversion, the movies that failed; then
    :func:`run_summary_lines`."""
    analysed, failed = layout.analysed_ids(), layout.failed_names()
    flagged, offsets, camera, applied = [], [], None, []
    for movie_id in analysed:
        try:
            report = read_json(layout.stats(movie_id))
            if verdict_of(report).flagged:
                flagged.append(movie_id)
            if ((report.get('input') or {}).get('lattice') or {}).get('path') == 'lattice':
                applied.append(movie_id)
            if offset_message(movie_id, report):
                offsets.append(movie_id)
            camera = camera_line(movie_id, report) or camera
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            pass
    lines = []
    if analysed:
        lines.append('%d movies analysed, %d flagged%s.'
                     % (len(analysed), len(flagged),
                        ' (movies %s)' % ranges(flagged) if flagged else ''))
        lines += list(conclusion_lines() if callable(conclusion_lines) else conclusion_lines)
    else:
        lines.append('No movie analysed yet.')
    if offsets:
        lines.append('%d movies carry an offset that a dark reference should remove '
                     '(ids %s; see warnings.txt).' % (len(offsets), _some(offsets)))
    if applied:
        lines.append('%d movies were gain-corrected at acquisition (ids %s): their '
                     'residuals are those of the reference applied, recovered from the '
                     'frames (extra/movie_%%06d_applied_reference.mrc).'
                     % (len(applied), _some(applied)))
    if camera:
        lines.append(camera)
    if failed:
        lines.append('%d movies could not be read (see warnings.txt).' % len(failed))
    return lines + run_summary_lines(layout)


def run_summary_lines(layout):
    """Why movies failed (the first three), the notes on reading the movies (also in the
    log), and whether analysis kept up with acquisition (run_folder.backlog)."""
    from . import backlog
    failed = layout.failed_names()
    lines = []
    for name in failed[:3]:
        try:
            lines.append('%s: %s' % (name.replace('.txt', ''),
                                     read_text(layout.extra('failed', name))))
        except OSError:
            pass
    if len(failed) > 3:
        lines.append('... and %d more (warnings.txt).' % (len(failed) - 3))
    noted = []
    for movie_id in layout.analysed_ids():
        try:
            notes = read_json(layout.stats(movie_id)).get('input_notes') or []
        except (OSError, ValueError):
            continue
        if notes:
            noted.append((movie_id, notes[0]))
    if noted:
        lines.append('Notes on reading %d movies (all in the log and the stats JSON), '
                     'e.g. movie %d: %s' % (len(noted), noted[0][0], noted[0][1]))
    if os.path.exists(layout.backlog):
        try:
            state = read_json(layout.backlog)
        except (OSError, ValueError):
            state = {}
        line = backlog.summary_line(state)
        if line:
            lines.append(line)
    return lines
