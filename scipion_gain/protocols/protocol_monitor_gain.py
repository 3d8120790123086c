"""Scipion protocol "gain check monitor": the scipion-em-facilities movie gain
monitor, attachable to ``GainProtMovieGain`` in the GUI, alarming on the
movie's verdict as well as on the paper's three statistics, for every new line.

Imported (and so registered) only when scipion-em-facilities imports: see
``protocols/__init__.py``. Everything is the facilities monitor's
(``ProtMonitorMovieGain`` / ``MonitorMovieGain``): its form (thresholds,
sampling interval, logging time, e-mail group), the sampling loop, the
notifiers (stdout and e-mail), the warnings file ``warningsMonitor.txt`` in the
monitored run folder (which its summary and the facilities report read), the
plot data (``getData``) and its viewer (it targets ``ProtMonitorMovieGain``,
a base class of this one). What changes:

* the input pointer's class is ``GainProtMovieGain``: the GUI's selection
  dialog lists only protocols that are instances of the pointer class
  (``Project.getProtocolCompatibleOutputs`` with ``Domain.findClass``), and the
  facilities monitor asks for ``XmippProtMovieGain``;
* ``step`` reads every line added to summaryForMonitor.txt since the last
  sample (the facilities one reads the last line only, so with more than one
  movie per interval it misses some, and repeats the last one's alarm every
  interval), and alarms also on the movie's verdict
  (``estimator.verdict.verdict_of``);
* one e-mail per movie with all its alarms, and no repeat when the monitor is
  restarted (the lines already seen are listed in the monitor's run folder);
* it ends when the movie gain protocol has stopped and its last line is read.
"""
import os

import pyworkflow.protocol.params as params
from pyworkflow.protocol import getUpdatedProtocol
from pyworkflow.protocol.constants import STATUS_ABORTED, STATUS_FAILED, STATUS_FINISHED

from emfacilities.protocols import MonitorMovieGain, ProtMonitorMovieGain

from . import monitor_alerts
from .protocol_movie_gain import GainProtMovieGain
from ..run_folder.logs import read_lines

#: the movie gain protocol has stopped: no new line will come
STOPPED = (STATUS_FINISHED, STATUS_FAILED, STATUS_ABORTED)

#: monitor run folder file: labels of the lines already handled (one per line)
SEEN_FILE = 'monitored_movies.txt'


class GainProtMonitorMovieGain(ProtMonitorMovieGain):
    """Watch a "movie gain" run (scipion-em-gain) during a session: for every
    movie it analyses, raise an alarm (log, warnings file, e-mail) when the
    movie's gain check verdict is flagged or when the residual gain fails the
    paper's thresholds.
    """
    _label = 'gain check monitor'

    def _defineParams(self, form):
        ProtMonitorMovieGain._defineParams(self, form)
        inputProtocol = form.getParam('inputProtocol')
        inputProtocol.setPointerClass(GainProtMovieGain)
        inputProtocol.help.set('The "movie gain" run (scipion-em-gain) to watch. Every line it '
                               'adds to summaryForMonitor.txt (one per analysed movie) is '
                               'checked.')
        # The loop ends with the movie gain run; the logging time is only a bound:
        # ProtMonitor's own default (24 days) rather than the gain monitor's 5 hours.
        form.getParam('monitorTime').default.set(34560)
        form.addParam('alarmOnVerdict', params.BooleanParam, default=True,
                      label='Raise alarm on the gain check verdict?',
                      help='The verdict of each analysed movie (extra/movie_%06d_stats.json '
                           'of the movie gain run): it separates detector structure left by '
                           'the gain reference (columns, rows, readout sectors, pixels) from '
                           'the specimen and the estimate\'s noise.')
        form.addParam('alarmOnStatistics', params.BooleanParam, default=True,
                      label='Raise alarm on the paper\'s statistics?',
                      help='The three thresholds above, on the residual gain of each analysed '
                           'movie (not on an estimated gain: without a gain reference its '
                           'statistics are the detector\'s own).')

    def createMonitor(self):
        prot = self.inputProtocol.get()
        prot.setProject(self.getProject())
        return GainMonitor(prot, workingDir=self.workingDir.get(),
                           samplingInterval=self.samplingInterval.get(),
                           monitorTime=self.monitorTime.get(),
                           email=self.createEmailNotifier(), stdout=True,
                           stddevValue=self.stddevValue.get(),
                           ratio1Value=self.ratio1Value.get(),
                           ratio2Value=self.ratio2Value.get(),
                           onVerdict=self.alarmOnVerdict.get(),
                           onStatistics=self.alarmOnStatistics.get())

    def _validate(self):
        errors = ProtMonitorMovieGain._validate(self)
        if self.samplingInterval.get() is None or self.samplingInterval.get() < 1:
            errors.append('The sampling interval must be at least 1 second.')
        return errors


class GainMonitor(MonitorMovieGain):
    """The facilities movie gain monitor, reading every new line."""

    def __init__(self, protocol, onVerdict=True, onStatistics=True, **kwargs):
        MonitorMovieGain.__init__(self, protocol, **kwargs)
        self.onVerdict = onVerdict
        self.onStatistics = onStatistics
        self._offset = 0
        self._seen = set()

    def initLoop(self):
        self._offset = 0
        self._seen = set(read_lines(self._seenPath()))

    def _seenPath(self):
        return os.path.join(self.workingDir, SEEN_FILE)

    def _stopped(self):
        try:
            return getUpdatedProtocol(self.protocol).getStatus() in STOPPED
        except Exception:  # no run.db yet (not launched), or busy: ask again next time
            return False

    def step(self):
        """Check the lines added since the last sample. True (the loop ends)
        once the movie gain run has stopped and all its lines are checked."""
        stopped = self._stopped()  # first: a stopped run's lines are all written
        prot = self.protocol
        lines, self._offset = monitor_alerts.complete_lines(
            prot._getPath('summaryForMonitor.txt'), self._offset)
        for text in lines:
            line = monitor_alerts.parse_line(text)
            if line is None or line.label in self._seen:
                continue
            self.check(line)
            self._seen.add(line.label)
            with open(self._seenPath(), 'a') as handle:
                handle.write(line.label + '\n')
        return stopped

    def check(self, line):
        """Alarm on one line: warnings file, then one notification (stdout, e-mail)."""
        alarms = monitor_alerts.alarms_for(line, self.protocol._getPath(), self.stddevValue,
                                           self.ratio1Value, self.ratio2Value,
                                           on_verdict=self.onVerdict,
                                           on_statistics=self.onStatistics)
        if not alarms:
            return alarms
        entries = ['%s: %s' % (line.label, alarm) for alarm in alarms]
        warnings = self.protocol._getPath(monitor_alerts.WARNINGS_FILE)
        known = set(read_lines(warnings))  # another monitor of the same run wrote them
        with open(warnings, 'a') as handle:
            for entry in entries:
                if entry not in known:
                    handle.write(entry + '\n')
        self.warning('\n'.join(entries))
        return alarms
