"""Read what a gain run left behind: a protocol run folder or loose statistics files.

The layout is the protocol's (see the project contract)::

    RUN/summary.txt, RUN/summaryForMonitor.txt, RUN/warnings.txt
    RUN/extra/movie_%06d_stats.json   result.report() + movie_id, kind, movie_file, verdict
    RUN/extra/movie_%06d_gain.mrc     the estimated (or residual) gain of that movie
    RUN/extra/movie_%06d_sum.mrc      optional: the sum of its corrected frames (power spectrum)
    RUN/extra/defects_%06d.mrc        optional: defect labels (estimator.defects.LABELS)
    RUN/extra/accumulated_gain.mrc, RUN/extra/accumulated_stats.json

One numbering: a movie is named by its id (``movie_id``, the number in the
file names: Scipion's id of the movie), everywhere; loose files without one
are numbered 1, 2, ... in the order given. One verdict:
:func:`scipion_gain.estimator.verdict.verdict_of`.

A folder without JSON files but with an Xmipp-style ``summary.txt`` (as
Xmipp's movie-gain protocol writes) is read from that summary: the time line
then works, the images do not. Images are read only when asked for
(:meth:`MovieRecord.load_gain`), so a run of thousands of movies loads fast.

No pyworkflow or pwem import here: the command line and the tests use it.
"""
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..estimator.statistics import Thresholds
from ..estimator.verdict import dqe_percent, plain_words, stat_value, verdict_of
from ..run_folder.layout import STATS_NAME, RunFolder, movie_id_of_label
from ..run_folder.logs import ranges
from ..run_folder.reference import reference_file

SUMMARY_PATTERN = re.compile(
    r'^(?P<label>\S+?):\s*mean=(?P<mean>\S+)\s+std=(?P<std>\S+)\s+\[min=(?P<min>[^,]+),\s*max=(?P<max>[^\]]+)\]'
    r'\s+2\.5%=(?P<p2_5>\S+)\s+25%=(?P<p25>\S+)\s+50%=(?P<p50>\S+)\s+75%=(?P<p75>\S+)\s+97\.5%=(?P<p97_5>\S+)')


# ------------------------------------------------------------------ records
@dataclass
class MovieRecord:
    """One analysed movie: its statistics (the JSON dict) and where its maps are."""
    index: int                     # arrival order, 0-based (internal; people read ``id``)
    stats: dict                    # statistics, ratios, flags, flagged, thresholds, ...
    movie_id: object = None
    kind: str = 'gain'             # 'gain' or 'residual'
    movie_file: str = None
    source: Path = None            # the JSON (or summary) it was read from
    gain_path: Path = None
    defects_path: Path = None
    sum_path: Path = None          # the sum of the movie's corrected frames, when saved
    acquired: float = None         # acquisition time (epoch seconds): the movie file's mtime
    analysed: float = None         # when its statistics were written (epoch seconds)

    @property
    def id(self):
        """The movie's number as people read it: its id, else its position counted from 1."""
        if isinstance(self.movie_id, (int, np.integer)) and not isinstance(self.movie_id, bool):
            return int(self.movie_id)
        return self.index + 1

    @property
    def file_name(self):
        return os.path.basename(str(self.movie_file)) if self.movie_file else ''

    @property
    def short_label(self):
        return f"movie {self.id}"

    @property
    def label(self):
        """'movie 7 (movie_007.mrc)': the id, and the file where it is known."""
        return self.short_label + (f" ({self.file_name})" if self.file_name else '')

    @property
    def verdict(self):
        return verdict_of(self.stats)

    @property
    def flagged(self):
        """THE verdict's flag (see :func:`verdict_of`), not the paper's."""
        return self.verdict.flagged

    @property
    def paper_flagged(self):
        return bool(self.stats.get('flagged', False))

    def value(self, key):
        """A statistic ('std', 'p2.5', ...) or ratio ('p97.5/p2.5', 'max/p97.5'), NaN if absent."""
        return stat_value(self.stats, key)

    def load_gain(self):
        return None if self.gain_path is None else read_map(self.gain_path)

    def load_defect_labels(self):
        """The defect label image (estimator.defects codes, uint8), or None."""
        return None if self.defects_path is None else read_labels(self.defects_path)

    def load_defects(self):
        """True where a pixel is defective, whatever the kind (or None)."""
        labels = self.load_defect_labels()
        return None if labels is None else labels > 0

    def load_sum(self):
        return None if self.sum_path is None else read_map(self.sum_path)

    def defect_counts(self):
        """The JSON's defect counts (estimator.defects kinds), or None."""
        counts = (self.stats.get('defects') or {}).get('counts')
        return dict(counts) if isinstance(counts, dict) else None


@dataclass
class RunData:
    """Everything the figures and the report need from one run (or loose stats files)."""
    movies: list = field(default_factory=list)        # MovieRecord, sorted by id
    root: Path = None
    accumulated_path: Path = None
    accumulated_stats: dict = None
    accumulated_defects_path: Path = None
    reference_path: Path = None                        # the movies' gain reference, as used
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)          # what the loader could not read, etc.
    project: str = None                                # the Scipion project, when known
    protocol: str = None                               # the run ('000089_GainProtMovieGain')

    @property
    def thresholds(self):
        """The thresholds the run used (from its stats), else the paper's."""
        for record in self.movies:
            if record.stats.get('thresholds'):
                return Thresholds(**{k: float(v) for k, v in record.stats['thresholds'].items()
                                     if k in ('std', 'percentile_ratio', 'max_ratio')})
        return Thresholds()

    @property
    def kind(self):
        kinds = {m.kind for m in self.movies}
        return kinds.pop() if len(kinds) == 1 else ('mixed' if kinds else 'gain')

    def flagged_ids(self):
        """Ids of the movies whose verdict is flagged."""
        return [m.id for m in self.movies if m.flagged]

    def ids(self):
        return [m.id for m in self.movies]

    def series(self, key):
        """(ids, values) of a statistic or ratio over the movies, as numpy arrays."""
        return (np.array([m.id for m in self.movies], dtype=float),
                np.array([m.value(key) for m in self.movies], dtype=float))

    def movie(self, movie_id):
        """The record of movie ``movie_id`` (its id, as everywhere)."""
        for record in self.movies:
            if record.id == movie_id:
                return record
        raise KeyError(f"no analysed movie with id {movie_id}")

    def with_gain(self):
        return [m for m in self.movies if m.gain_path is not None]

    @property
    def accumulated_verdict(self):
        return None if self.accumulated_stats is None else verdict_of(self.accumulated_stats)

    def session_span(self):
        """(first, last) acquisition time (epoch seconds) of the analysed movies, or None."""
        times = [m.acquired for m in self.movies if m.acquired is not None]
        return (min(times), max(times)) if times else None

    def load_reference(self):
        """The movies' gain reference as a mean-1 correction, or None."""
        if self.reference_path is None:
            return None
        from ..io import read_gain_reference
        return read_gain_reference(self.reference_path)[0]

    def load_accumulated(self):
        """(gain, defect mask) of the running estimate, or (None, None)."""
        gain, labels = self.load_accumulated_labels()
        return gain, (None if labels is None else labels > 0)

    def load_accumulated_labels(self):
        """(gain, defect label image) of the running estimate, or (None, None)."""
        if self.accumulated_path is None:
            return None, None
        if self.accumulated_defects_path is not None:
            labels = read_labels(self.accumulated_defects_path)
        else:  # no map written: the pixels defective in each of the last movies
            maps = [m.load_defect_labels() for m in self.movies[-10:] if m.defects_path]
            labels = None
            if maps:
                common = np.logical_and.reduce([m > 0 for m in maps])
                labels = np.where(common, maps[-1], 0).astype(np.uint8)
        return read_map(self.accumulated_path), labels


def read_map(path):
    """A 2-D float32 map from an MRC (or any format scipion_gain.io reads)."""
    from ..io import read_image
    image, _ = read_image(path)
    return np.asarray(image, dtype=np.float32)


def read_labels(path):
    """A defect label image (uint8 codes of estimator.defects; an old 0/1 mask gives 0/1)."""
    values = read_map(path)
    return np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ the conclusion
def _movies_words(ids):
    ids = sorted(set(ids))
    return ('movie ' if len(ids) == 1 else 'movies ') + ranges(ids)


def onset(records):
    """The first record from which every later movie's verdict is flagged, or None."""
    start = None
    for record in records:
        if record.flagged:
            start = record if start is None else start
        else:
            start = None
    return start


def conclusion(data_or_records, kind=None):
    """The plain sentence a facility user acts on, from the movies' verdicts.

    "Reference consistent with movies 1-6; from movie 7 (file movie_007.mrc) the
    residual is flagged: ...; acquire a new gain reference." or "No problem
    found in 10 movies." Movies flagged alone before that are named too.
    """
    records = list(getattr(data_or_records, 'movies', data_or_records))
    records.sort(key=lambda r: r.id)
    if kind is None:
        kinds = {r.kind for r in records}
        kind = kinds.pop() if len(kinds) == 1 else 'gain'
    if not records:
        return 'No movie analysed yet.'
    what = 'the residual' if kind == 'residual' else 'the estimated gain'
    flagged = [r for r in records if r.flagged]
    if not flagged:
        return (f"No problem found in {len(records)} movie{'s' if len(records) != 1 else ''} "
                f"({_movies_words([r.id for r in records])}).")
    first = onset(records)
    parts = []
    if first is not None:
        before = [r.id for r in records if r.id < first.id]
        reasons = first.verdict.reasons_text or 'see its statistics'
        loss = first.verdict.dqe_loss
        if loss is not None:  # the figure a facility acts on, first
            reasons = (f"it loses {dqe_percent(loss)} of the detector's DQE at that movie's "
                       f"dose, from {reasons}")
        where = f"movie {first.id}" + (f" (file {first.file_name})" if first.file_name else '')
        if kind == 'residual':
            if before:
                clean = [i for i in before if i not in {r.id for r in flagged}]
                lead = f"Reference consistent with {_movies_words(clean)}; from {where}"
            else:
                lead = f"From the first analysed movie, {where},"
            action = ('acquire a new gain reference' if before else
                      'the gain reference does not fit these movies: check its orientation '
                      'and whether it is the right one, or acquire a new gain reference')
            parts.append(f"{lead} {what} is flagged: {reasons}; {action}.")
        else:   # no reference applied: what is flagged is the movies' own detector structure
            lead = (f"Gain consistent over {_movies_words(before)}; from {where}" if before
                    else f"From the first analysed movie, {where},")
            action = ('the detector changed there: correct the movies from there on with a '
                      'new gain reference' if before else
                      'the movies hold detector structure: correct them with a gain reference')
            parts.append(f"{lead} {what} is flagged: {reasons}; {action}.")
        alone = [r for r in flagged if r.id < first.id]
    else:
        alone = flagged
    if alone:
        listed = '; '.join(f"movie {r.id}" + (f" (file {r.file_name})" if r.file_name else '')
                           + f": {r.verdict.reasons_text or 'flagged'}" for r in alone[:5])
        more = f" and {len(alone) - 5} more" if len(alone) > 5 else ''
        if first is None:
            last_ok = records[-1]
            parts.append(f"Flagged alone: {listed}{more}; the latest analysed movie "
                         f"({last_ok.id}) is not flagged: watch the next movies.")
        else:
            parts.append(f"Also flagged alone before that: {listed}{more}.")
    return ' '.join(parts)


# ------------------------------------------------------------------ loading
def load(paths):
    """Load run folders and/or statistics JSON files into one :class:`RunData`.

    ``paths`` is one path or a list: a folder is read as a run folder (its
    ``extra/`` or the folder itself holding ``movie_*_stats.json``), a file
    as one statistics JSON (``scipion-gain estimate --json`` or the
    protocol's). Raises :class:`~scipion_gain.io.InputError` when nothing
    usable is found.
    """
    from ..io import InputError
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no run folder or statistics file given")
    data = RunData(root=paths[0] if len(paths) == 1 and paths[0].is_dir() else None)
    loose = []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_dir():
            _load_folder(path, data)
        else:
            loose.append(path)
    next_index = max([m.index for m in data.movies], default=-1) + 1
    for number, path in enumerate(loose):
        try:
            record = _record_from_json(path, default_index=next_index + number)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: cannot read statistics ({str(exc).splitlines()[0]})")
        data.movies.append(record)
    if not data.movies and data.accumulated_stats is None:
        raise InputError(f"{', '.join(map(str, paths))}: no movie statistics found "
                         f"(expected extra/movie_*_stats.json, summary.txt or stats JSON files)")
    _renumber_duplicates(data)
    data.movies.sort(key=lambda m: (m.id, m.index))
    if data.root is not None:
        data.project, data.protocol = _project_and_run(data.root)
    _find_times(data)
    return data


def _project_and_run(root):
    """(project name, run name) of a folder PROJECT/Runs/RUN, else (None, folder name)."""
    root = Path(root).resolve()
    if root.parent.name == 'Runs':
        return root.parent.parent.name, root.name
    return None, root.name


def _find_times(data):
    """Acquisition time of each movie: its file's modification time, found beside the
    run's project (protocol files name movies relative to it) or as given."""
    bases = []
    if data.root is not None:
        root = Path(data.root).resolve()
        if root.parent.name == 'Runs':
            bases.append(root.parent.parent)
    bases.append(Path.cwd())
    for record in data.movies:
        if record.source is not None and record.source.exists() and record.analysed is None:
            record.analysed = record.source.stat().st_mtime
        given = record.stats.get('acquired')
        if isinstance(given, (int, float)):
            record.acquired = float(given)
            continue
        if not record.movie_file:
            continue
        path = Path(str(record.movie_file))
        candidates = [path] if path.is_absolute() else [base / path for base in bases]
        for candidate in candidates:
            try:
                record.acquired = candidate.stat().st_mtime
                break
            except OSError:
                continue


def _load_folder(folder, data):
    extra = folder / 'extra' if (folder / 'extra').is_dir() else folder
    stats_files = sorted(p for p in extra.iterdir() if STATS_NAME.match(p.name))
    for path in stats_files:
        try:
            data.movies.append(_record_from_json(path))
        except (ValueError, OSError) as exc:  # a file being written, or damaged: say so, go on
            data.notes.append(f"{path}: skipped ({exc})")
    if not stats_files:
        summary = folder / 'summary.txt'
        if summary.exists():
            data.movies.extend(_records_from_summary(summary))
            data.notes.append(f"{summary}: statistics read from the summary (no stats JSON files)")
    # The running estimate: accumulated_gain.mrc, else (gain mode, accumulate off) the
    # estimate the protocol attaches to its output movies.
    for name in ('accumulated_gain.mrc', 'estimated_gain.mrc'):
        if (extra / name).exists():
            data.accumulated_path = extra / name
            break
    for name in ('accumulated_defects.mrc', 'defects_accumulated.mrc'):
        if (extra / name).exists():
            data.accumulated_defects_path = extra / name
    if (extra / 'accumulated_stats.json').exists():
        try:
            data.accumulated_stats = json.loads((extra / 'accumulated_stats.json').read_text())
        except ValueError as exc:
            data.notes.append(f"{extra / 'accumulated_stats.json'}: skipped ({exc})")
    # The movies' gain reference in residual mode, as the run used it
    layout = RunFolder(folder, extra='extra' if extra != folder else '')
    in_use = reference_file(layout)
    if in_use is not None and Path(in_use[0]).exists():
        data.reference_path = Path(in_use[0])
    elif in_use is not None:
        data.notes.append(f"{layout.reference_info}: the gain reference {in_use[0]} is gone")
    warnings = folder / 'warnings.txt'
    if warnings.exists():
        data.warnings.extend(plain_words(line.rstrip())  # in today's words, as the verdicts
                             for line in warnings.read_text().splitlines() if line.strip())


def _record_from_json(path, default_index=0):
    path = Path(path)
    with open(path) as handle:
        stats = json.load(handle)
    if not isinstance(stats, dict) or 'statistics' not in stats:
        raise ValueError(f"{path}: not a gain statistics file (no 'statistics' key)")
    for key in ('statistics', 'ratios', 'flags', 'thresholds'):  # the figures index these
        if key in stats and not isinstance(stats[key], dict):
            raise ValueError(f"'{key}' is {json.dumps(stats[key])}, not an object")
    number = movie_id_of_label(path.name) if STATS_NAME.match(path.name) else None
    index = stats.get('movie_index', number - 1 if number is not None else default_index)
    movie_id = stats.get('movie_id', number)
    record = MovieRecord(index=int(index), stats=stats, movie_id=movie_id,
                         kind=stats.get('kind', 'gain'),
                         movie_file=stats.get('movie_file') or _single_movie(stats),
                         source=path)
    if number is not None:
        # The maps sit beside the stats, named by the same number (movie id).
        for attr, name in (('gain_path', f'movie_{number:06d}_gain.mrc'),
                           ('sum_path', f'movie_{number:06d}_sum.mrc'),
                           ('defects_path', f'defects_{number:06d}.mrc'),
                           ('defects_path', f'movie_{number:06d}_defects.mrc')):
            candidate = path.with_name(name)
            if candidate.exists() and getattr(record, attr) is None:
                setattr(record, attr, candidate)
    else:  # scipion-gain estimate --json: the files it names
        for attr, key in (('gain_path', 'output'), ('defects_path', 'defects_map'),
                          ('sum_path', 'sum')):
            value = stats.get(key)
            if isinstance(value, str) and Path(value).exists():
                setattr(record, attr, Path(value))
    return record


def _single_movie(stats):
    movies = stats.get('movies')
    if isinstance(movies, list) and len(movies) == 1 and isinstance(movies[0], str):
        return movies[0]
    return None


def _records_from_summary(path):
    records = []
    for line in Path(path).read_text().splitlines():
        match = SUMMARY_PATTERN.match(line.strip())
        if not match:
            continue
        values = {k: float(v) for k, v in match.groupdict().items() if k != 'label'}
        statistics = {'mean': values['mean'], 'std': values['std'], 'min': values['min'],
                      'max': values['max'], 'p2.5': values['p2_5'], 'p25': values['p25'],
                      'p50': values['p50'], 'p75': values['p75'], 'p97.5': values['p97_5']}
        from ..estimator.statistics import _ratio
        thresholds = Thresholds()
        ratios = {'p97.5/p2.5': _ratio(statistics['p97.5'], statistics['p2.5']),
                  'max/p97.5': _ratio(statistics['max'], statistics['p97.5'])}
        flags = {'std': statistics['std'] > thresholds.std,
                 'percentile_ratio': ratios['p97.5/p2.5'] > thresholds.percentile_ratio,
                 'max_ratio': ratios['max/p97.5'] > thresholds.max_ratio}
        label = match.group('label')
        number = re.search(r'(\d+)', label)
        stats = {'statistics': statistics, 'ratios': ratios, 'flags': flags,
                 'flagged': any(flags.values()), 'thresholds': asdict(thresholds)}
        records.append(MovieRecord(index=len(records), stats=stats,
                                   movie_id=int(number.group(1)) if number else None,
                                   kind='residual' if 'residual' in label else 'gain',
                                   source=Path(path)))
    return records


def _renumber_duplicates(data):
    """Loose files may all say movie_index 0 and carry no id: keep their order, give them
    distinct positions (and so distinct numbers 1, 2, ...)."""
    indices = [m.index for m in data.movies]
    if len(set(indices)) != len(indices):
        for number, record in enumerate(data.movies):
            record.index = number
    numbers = [m.id for m in data.movies]
    if len(set(numbers)) != len(numbers):  # loose files of different runs: positions instead
        for number, record in enumerate(data.movies):
            record.movie_id = None
            record.index = number


def format_time(epoch, with_date=False):
    if epoch is None:
        return ''
    return time.strftime('%Y-%m-%d %H:%M:%S' if with_date else '%H:%M:%S',
                         time.localtime(epoch))
