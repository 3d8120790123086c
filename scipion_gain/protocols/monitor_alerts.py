"""What the gain check monitor reads and what it says.

The monitor protocol (``protocol_monitor_gain.py``, registered only with
scipion-em-facilities) runs the facilities monitor loop; this module holds
the part that does not need scipion-em-facilities, so that it is tested
without it:

* the lines of the movie gain protocol's ``summaryForMonitor.txt``
  (``run_folder.logs.MONITOR_FORMAT``: ``movie_%06d_<kind>: std p2.5 p97.5 max``;
  the facilities monitor reads ``line.split()[1:]``, the label is ours and
  carries the movie id);
* the facilities monitor's three tests with its own messages
  (``MonitorMovieGain.step``), here for every line and not only the last;
* the movie's verdict from ``extra/movie_%06d_stats.json`` (``estimator.verdict.verdict_of``:
  the ``verdict`` key, with its fallback for stats written before it existed).
"""
import json
import os
import re
from dataclasses import dataclass
from typing import Optional

from ..estimator.verdict import dqe_percent, verdict_of

#: a label the movie gain protocol writes: the movie's Scipion id and the kind of map
LABEL = re.compile(r'^movie_(\d+)_(residual|gain)$')

#: the facilities monitor's e-mail subject (kept, so that filters at a facility still match)
ALERT_TITLE = 'Scipion Movie Gain Monitor WARNING'

#: the file the facilities monitor writes its alarms to, in the monitored protocol's run
#: folder (its protocol summary and the facilities report read it there)
WARNINGS_FILE = 'warningsMonitor.txt'


@dataclass(frozen=True)
class MonitorLine:
    """One line of summaryForMonitor.txt."""
    label: str
    movie_id: Optional[int]   # None for a label that is not ours
    kind: Optional[str]       # 'residual' or 'gain'
    std: float
    p025: float
    p975: float
    max: float

    @property
    def percentile_ratio(self):
        return _ratio(self.p975, self.p025)

    @property
    def max_ratio(self):
        return _ratio(self.max, self.p975)


def _ratio(a, b):
    return a / b if b > 0 else float('inf')


def parse_line(line):
    """A summaryForMonitor.txt line as the facilities monitor splits it: a label
    ending in a colon, then four floats. None for anything else (a blank line)."""
    fields = line.split()
    if len(fields) != 5 or not fields[0].endswith(':'):
        return None
    try:
        std, p025, p975, maximum = map(float, fields[1:])
    except ValueError:
        return None
    label = fields[0][:-1]
    match = LABEL.match(label)
    return MonitorLine(label, int(match.group(1)) if match else None,
                       match.group(2) if match else None, std, p025, p975, maximum)


def complete_lines(path, start=0):
    """(lines, offset): the whole lines of ``path`` from byte ``start`` on, and
    the offset after the last of them. A last line still being written (no
    newline yet) is left for the next read."""
    if not os.path.exists(path):
        return [], start
    with open(path, 'rb') as handle:
        handle.seek(start)
        data = handle.read()
    end = data.rfind(b'\n') + 1
    return data[:end].decode('utf-8', 'replace').splitlines(), start + end


def statistics_alarms(line, std_max, percentile_ratio_max, max_ratio_max):
    """The facilities monitor's three tests (paper thresholds 0.04, 1.15, 4.5
    by default) and its messages, for one residual-gain line. A line of an
    estimated gain (``_gain``: no reference applied) holds the detector's own
    gain, which the paper's thresholds do not judge: no alarm."""
    if line.kind == 'gain':
        return []
    alarms = []
    if line.std > std_max:
        alarms.append('Residual gain standard deviation is %f.' % line.std)
    if line.percentile_ratio > percentile_ratio_max:
        alarms.append('The ratio between the 97.5 and 2.5 percentiles is %f.'
                      % line.percentile_ratio)
    if line.max_ratio > max_ratio_max:
        alarms.append('The ratio between the maximum gain value and the 97.5 percentile '
                      'is %f.' % line.max_ratio)
    return alarms


def stats_path(run_folder, movie_id):
    return os.path.join(run_folder, 'extra', 'movie_%06d_stats.json' % movie_id)


def read_stats(run_folder, movie_id):
    """The movie's stats JSON, or None when it is missing or unreadable."""
    try:
        with open(stats_path(run_folder, movie_id)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def verdict_alarm(verdict):
    """The alarm message for a flagged verdict (an estimator.verdict.Verdict: its sentence, plus the reasons
    and the DQE loss where the sentence does not already say them), else None."""
    if verdict is None or not verdict.flagged:
        return None
    message = 'Gain check verdict: %s' % str(verdict.sentence or 'flagged').rstrip('.')
    reasons = [str(r) for r in verdict.reasons]
    if reasons and not all(r in message for r in reasons):
        message += ' (reasons: %s)' % '; '.join(reasons)
    if verdict.dqe_loss is not None and 'DQE' not in message:
        message += '; DQE loss ' + dqe_percent(float(verdict.dqe_loss))
    return message + '.'


def alarms_for(line, run_folder, std_max, percentile_ratio_max, max_ratio_max,
               on_verdict=True, on_statistics=True):
    """Every alarm of one summaryForMonitor.txt line: the paper's statistics
    (``statistics_alarms``) and the movie's verdict, read from the run folder."""
    alarms = []
    if on_statistics:
        alarms += statistics_alarms(line, std_max, percentile_ratio_max, max_ratio_max)
    stats = read_stats(run_folder, line.movie_id) if line.movie_id is not None else None
    if on_verdict and stats:
        alarm = verdict_alarm(verdict_of(stats))
        if alarm:
            alarms.append(alarm)
    return alarms
