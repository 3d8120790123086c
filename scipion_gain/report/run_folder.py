"""Read what a gain run left behind: a protocol run folder or loose statistics files.

The layout is the protocol's (see the project contract)::

    RUN/summary.txt, RUN/summaryForMonitor.txt, RUN/warnings.txt
    RUN/extra/movie_%06d_stats.json   result.report() + movie_id, movie_index, kind, movie_file
    RUN/extra/movie_%06d_gain.mrc     the estimated (or residual) gain of that movie
    RUN/extra/defects_%06d.mrc        optional: defect labels (> 0 where a pixel is defective)
    RUN/extra/accumulated_gain.mrc, RUN/extra/accumulated_stats.json

A folder without JSON files but with an Xmipp-style ``summary.txt`` (as
Xmipp's movie-gain protocol writes) is read from that summary: the time line
then works, the images do not. Images are read only when asked for
(:meth:`MovieRecord.load_gain`), so a run of thousands of movies loads fast.

No pyworkflow or pwem import here: the command line and the tests use it.
"""
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..estimator.statistics import Thresholds

#: Ratios of a map whose denominator is 0 are stored as the largest float (JSON has no inf).
HUGE_RATIO = 1e300
STATS_PATTERN = re.compile(r'movie_(\d+)_stats\.json$')
SUMMARY_PATTERN = re.compile(
    r'^(?P<label>\S+?):\s*mean=(?P<mean>\S+)\s+std=(?P<std>\S+)\s+\[min=(?P<min>[^,]+),\s*max=(?P<max>[^\]]+)\]'
    r'\s+2\.5%=(?P<p2_5>\S+)\s+25%=(?P<p25>\S+)\s+50%=(?P<p50>\S+)\s+75%=(?P<p75>\S+)\s+97\.5%=(?P<p97_5>\S+)')


@dataclass
class MovieRecord:
    """One analysed movie: its statistics (the JSON dict) and where its maps are."""
    index: int                     # arrival order, 0-based (the time line's x)
    stats: dict                    # statistics, ratios, flags, flagged, thresholds, ...
    movie_id: object = None
    kind: str = 'gain'             # 'gain' or 'residual'
    movie_file: str = None
    source: Path = None            # the JSON (or summary) it was read from
    gain_path: Path = None
    defects_path: Path = None

    @property
    def label(self):
        name = f"movie {self.index}"
        return name if self.movie_id in (None, '', self.index) else f"{name} (id {self.movie_id})"

    @property
    def flagged(self):
        return bool(self.stats.get('flagged', False))

    def value(self, key):
        """A statistic ('std', 'p2.5', ...) or ratio ('p97.5/p2.5', 'max/p97.5'), NaN if absent."""
        for group in ('statistics', 'ratios'):
            if key in self.stats.get(group, {}):
                return float(self.stats[group][key])
        return float('nan')

    def load_gain(self):
        return None if self.gain_path is None else read_map(self.gain_path)

    def load_defects(self):
        return None if self.defects_path is None else read_map(self.defects_path) > 0.5


@dataclass
class RunData:
    """Everything the figures and the report need from one run (or loose stats files)."""
    movies: list = field(default_factory=list)        # MovieRecord, sorted by index
    root: Path = None
    accumulated_path: Path = None
    accumulated_stats: dict = None
    accumulated_defects_path: Path = None
    reference_path: Path = None                        # the movies' gain reference, as used
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)          # what the loader could not read, etc.

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

    def flagged_indices(self):
        return [m.index for m in self.movies if m.flagged]

    def series(self, key):
        """(indices, values) of a statistic or ratio over the movies, as numpy arrays."""
        return (np.array([m.index for m in self.movies], dtype=float),
                np.array([m.value(key) for m in self.movies], dtype=float))

    def movie(self, index):
        for record in self.movies:
            if record.index == index:
                return record
        raise KeyError(f"no movie with index {index}")

    def with_gain(self):
        return [m for m in self.movies if m.gain_path is not None]

    def load_reference(self):
        """The movies' gain reference as a mean-1 correction, or None."""
        if self.reference_path is None:
            return None
        from ..io import read_gain_reference
        return read_gain_reference(self.reference_path)[0]

    def load_accumulated(self):
        if self.accumulated_path is None:
            return None, None
        if self.accumulated_defects_path is not None:
            defects = read_map(self.accumulated_defects_path) > 0.5
        else:  # no mask written: the pixels without signal in each of the last movies
            masks = [m.load_defects() for m in self.movies[-10:] if m.defects_path is not None]
            defects = np.logical_and.reduce(masks) if masks else None
        return read_map(self.accumulated_path), defects


def read_map(path):
    """A 2-D float32 map from an MRC (or any format scipion_gain.io reads)."""
    from ..io import read_image
    image, _ = read_image(path)
    return np.asarray(image, dtype=np.float32)


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
    data.movies.sort(key=lambda m: m.index)
    return data


def _load_folder(folder, data):
    extra = folder / 'extra' if (folder / 'extra').is_dir() else folder
    stats_files = sorted(p for p in extra.iterdir() if STATS_PATTERN.search(p.name))
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
    # The movies' gain reference in residual mode: the protocol's copy, else the file it names.
    info_file = extra / 'gain_reference.json'
    if (extra / 'oriented_gain.mrc').exists():  # hook (protocol orientation check): as used
        data.reference_path = extra / 'oriented_gain.mrc'
    elif (extra / 'gain_reference.mrc').exists():
        data.reference_path = extra / 'gain_reference.mrc'
    elif info_file.exists():
        try:
            info = json.loads(info_file.read_text())
            used = info.get('used') or info.get('source')
            if used and Path(used).exists():
                data.reference_path = Path(used)
            elif used:
                data.notes.append(f"{info_file}: the gain reference {used} is gone")
        except (ValueError, AttributeError) as exc:
            data.notes.append(f"{info_file}: skipped ({exc})")
    warnings = folder / 'warnings.txt'
    if warnings.exists():
        data.warnings.extend(line.rstrip() for line in warnings.read_text().splitlines() if line.strip())


def _record_from_json(path, default_index=0):
    path = Path(path)
    with open(path) as handle:
        stats = json.load(handle)
    if not isinstance(stats, dict) or 'statistics' not in stats:
        raise ValueError(f"{path}: not a gain statistics file (no 'statistics' key)")
    for key in ('statistics', 'ratios', 'flags', 'thresholds'):  # the figures index these
        if key in stats and not isinstance(stats[key], dict):
            raise ValueError(f"'{key}' is {json.dumps(stats[key])}, not an object")
    match = STATS_PATTERN.search(path.name)
    number = int(match.group(1)) if match else None
    index = stats.get('movie_index', number if number is not None else default_index)
    record = MovieRecord(index=int(index), stats=stats, movie_id=stats.get('movie_id', number),
                         kind=stats.get('kind', 'gain'), movie_file=stats.get('movie_file'),
                         source=path)
    if number is not None:
        # The maps sit beside the stats, named by the same number (movie id).
        for attr, name in (('gain_path', f'movie_{number:06d}_gain.mrc'),
                           ('defects_path', f'defects_{number:06d}.mrc'),
                           ('defects_path', f'movie_{number:06d}_defects.mrc')):
            candidate = path.with_name(name)
            if candidate.exists() and getattr(record, attr) is None:
                setattr(record, attr, candidate)
    elif stats.get('output') and Path(stats['output']).exists():  # scipion-gain estimate --json
        record.gain_path = Path(stats['output'])
    return record


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
    """Loose files may all say movie_index 0: keep their order, give them distinct indices."""
    indices = [m.index for m in data.movies]
    if len(set(indices)) != len(indices):
        for number, record in enumerate(data.movies):
            record.index = number
