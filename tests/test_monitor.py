"""The gain check monitor: what it reads and says, and the protocol
with the real scipion-em-facilities (the ``facilities`` extra; skipped, with the
reason, when it does not import).

The Scipion test runs movies of the demo's detector (``scipion_gain.demo``:
512 x 512, a readout sector 20 % weaker and new column factors after the
drift), which the paper's statistics and the verdict both flag.
"""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from scipion_gain import demo
from scipion_gain.io import write_mrc
from scipion_gain.protocols import MONITOR_UNAVAILABLE
from scipion_gain.estimator.verdict import Verdict, verdict_of
from scipion_gain.protocols.monitor_alerts import (ALERT_TITLE, alarms_for, complete_lines,
                                                   parse_line, statistics_alarms, verdict_alarm)
from scipion_gain.run_folder.logs import monitor_line
from scipion_gain.simulate import simulate_gain

from test_protocol import import_movies, refresh, run_gain, stats_of, wait_for

import pyworkflow.project as pwproj
from pyworkflow.plugin import Domain
from pyworkflow.protocol import getUpdatedProtocol

needs_facilities = pytest.mark.skipif(MONITOR_UNAVAILABLE is not None,
                                      reason=str(MONITOR_UNAVAILABLE))

DRIFTED_STATS = {'mean': 1.0, 'std': 0.1038, 'min': 0.5, 'max': 1.6, 'p2.5': 0.85,
                 'p25': 0.93, 'p50': 1.0, 'p75': 1.07, 'p97.5': 1.207}
FLAT_STATS = {'mean': 1.0, 'std': 0.012, 'min': 0.9, 'max': 1.08, 'p2.5': 0.976,
              'p25': 0.99, 'p50': 1.0, 'p75': 1.01, 'p97.5': 1.024}


def assessment(flagged, found=()):
    return {'flagged': flagged, 'noise': {'pixel_std': 0.01},
            'components': [{'name': name, 'found': name in found, 'size': 0.03, 'z': 12.0}
                           for name in ('columns', 'rows', 'sectors', 'pixels')]}


# ------------------------------------------------------------------ lines
def test_a_monitor_line_parses_back_with_its_movie_id_and_kind():
    line = parse_line(monitor_line('movie_000042_residual', DRIFTED_STATS))
    assert (line.label, line.movie_id, line.kind) == ('movie_000042_residual', 42, 'residual')
    assert (line.std, line.p025, line.p975, line.max) == (0.1038, 0.85, 1.207, 1.6)
    assert line.percentile_ratio == pytest.approx(1.207 / 0.85)
    assert parse_line('movie_000007_gain: 0.1 0.9 1.1 1.3').kind == 'gain'
    other = parse_line('movie_name: 0.1 0.9 1.1 1.3')  # another writer's label: no id
    assert other.movie_id is None and other.std == 0.1


@pytest.mark.parametrize('text', ['', 'movie_000001_residual: 0.1 0.9 1.1',
                                  'movie_000001_residual 0.1 0.9 1.1 1.3',
                                  'movie_000001_residual: 0.1 0.9 x 1.3'])
def test_what_is_not_a_monitor_line_is_skipped(text):
    assert parse_line(text) is None


def test_a_line_still_being_written_is_read_the_next_time(tmp_path):
    path = tmp_path / 'summaryForMonitor.txt'
    assert complete_lines(str(path)) == ([], 0)
    first = monitor_line('movie_000001_residual', FLAT_STATS)
    path.write_text(first + 'movie_000002_resid')
    lines, offset = complete_lines(str(path))
    assert lines == [first.rstrip('\n')] and offset == len(first)
    second = monitor_line('movie_000002_residual', DRIFTED_STATS)
    path.write_text(first + second)
    assert complete_lines(str(path), offset) == ([second.rstrip('\n')], len(first + second))


# ------------------------------------------------------------------ alarms
def test_the_papers_statistics_alarm_with_the_facilities_messages():
    drifted = parse_line(monitor_line('movie_000004_residual', DRIFTED_STATS))
    assert statistics_alarms(drifted, 0.04, 1.15, 4.5) == [
        'Residual gain standard deviation is 0.103800.',
        'The ratio between the 97.5 and 2.5 percentiles is 1.420000.']
    assert statistics_alarms(drifted, 0.2, 1.5, 4.5) == []
    flat = parse_line(monitor_line('movie_000001_residual', FLAT_STATS))
    assert statistics_alarms(flat, 0.04, 1.15, 4.5) == []
    hot = parse_line('movie_000002_residual: 0.01 0.98 1.02 5.0')
    assert statistics_alarms(hot, 0.04, 1.15, 4.5) == [
        'The ratio between the maximum gain value and the 97.5 percentile is 4.901961.']
    # an estimated gain (no reference applied) is the detector's own: not judged
    assert statistics_alarms(parse_line(monitor_line('movie_000004_gain', DRIFTED_STATS)),
                             0.04, 1.15, 4.5) == []


def test_the_verdict_key_is_the_verdict_and_older_stats_fall_back():
    verdict = {'flagged': True, 'reasons': ['step between readout sectors 11.4 %'],
               'dqe_loss': 0.031, 'sentence': 'A readout sector is 20 % off.'}
    # the verdict wins over the assessment when both are there
    given = verdict_of({'verdict': verdict, 'assessment': assessment(False)})
    assert (given.flagged, given.reasons, given.dqe_loss, given.sentence, given.source) == (
        True, verdict['reasons'], 0.031, verdict['sentence'], 'verdict')
    assert verdict_of({'assessment': assessment(True, ['columns'])}).flagged is True
    assert verdict_of({'assessment': assessment(False), 'flagged': True}).flagged is False


def test_a_flagged_verdict_alarms_with_its_sentence():
    # the estimator's sentence already says the reasons and the DQE cost
    reason = 'column pattern 6.65 % (z 2447)'
    sentence = ('the reference leaves structure beyond noise: %s; it costs 2.31 %% of the DQE '
                'at 30 e/px: check or replace the gain reference' % reason)
    assert verdict_alarm(Verdict(True, [reason], dqe_loss=0.0231,
                                  sentence=sentence)) == 'Gain check verdict: %s.' % sentence
    # otherwise they are added
    assert verdict_alarm(Verdict(True, ['sectors'], dqe_loss=0.031,
                                  sentence='A readout sector is 20 % off.')) == \
        'Gain check verdict: A readout sector is 20 % off (reasons: sectors); DQE loss 3.10 %.'
    assert verdict_alarm(Verdict(True, [], dqe_loss=None,
                                  sentence='flagged')) == 'Gain check verdict: flagged.'
    assert verdict_alarm(Verdict(False, [], dqe_loss=0.0,
                                  sentence='no structure beyond the estimate\'s noise: ok')) is None
    assert verdict_alarm(None) is None


def test_alarms_of_a_line_read_the_movies_verdict_from_the_run_folder(tmp_path):
    extra = tmp_path / 'extra'
    extra.mkdir()
    (extra / 'movie_000004_stats.json').write_text(json.dumps(
        {'verdict': {'flagged': True, 'reasons': ['columns'], 'dqe_loss': None,
                     'sentence': 'columns'}}))
    (extra / 'movie_000005_stats.json').write_text(json.dumps(
        {'assessment': assessment(True, ['rows'])}))
    flat4 = parse_line(monitor_line('movie_000004_residual', FLAT_STATS))
    assert alarms_for(flat4, str(tmp_path), 0.04, 1.15, 4.5) == ['Gain check verdict: columns.']
    assert alarms_for(flat4, str(tmp_path), 0.04, 1.15, 4.5, on_verdict=False) == []
    drifted5 = parse_line(monitor_line('movie_000005_gain', DRIFTED_STATS))
    # stats from before the verdict: its fallback (the assessment's flag, with what it found)
    assert alarms_for(drifted5, str(tmp_path), 0.04, 1.15, 4.5) == [
        'Gain check verdict: flagged: row pattern 3.00 % (12 times its noise).']
    drifted6 = parse_line(monitor_line('movie_000006_residual', DRIFTED_STATS))  # no stats file
    assert len(alarms_for(drifted6, str(tmp_path), 0.04, 1.15, 4.5)) == 2
    assert alarms_for(drifted6, str(tmp_path), 0.04, 1.15, 4.5, on_statistics=False) == []


# ------------------------------------------------------------------ plugin
def test_the_plugin_works_without_facilities_and_then_has_no_monitor_nor_template():
    """A fresh interpreter in which scipion-em-facilities cannot be imported."""
    script = textwrap.dedent('''
        import sys
        sys.modules['emfacilities'] = None  # import emfacilities -> ImportError
        from pyworkflow.plugin import Domain
        from pyworkflow.template import TemplateList
        from scipion_gain.protocols import MONITOR_UNAVAILABLE
        protocols = Domain.getProtocols()
        templates = TemplateList()
        templates.addPluginTemplates()
        print('GainProtMovieGain' in protocols, 'GainProtMonitorMovieGain' in protocols,
              [t.getObjId() for t in templates.templates if t.source == 'scipion_gain'])
        print(MONITOR_UNAVAILABLE)
    ''')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    registered, reason = result.stdout.strip().splitlines()[-2:]
    assert registered == 'True False []'
    assert reason.startswith('scipion-em-facilities is not installed or does not import')


@needs_facilities
def test_the_monitor_is_registered_with_the_facilities_form_and_viewer():
    Monitor = Domain.findClass('GainProtMonitorMovieGain')
    from emfacilities.protocols import ProtMonitorMovieGain
    assert issubclass(Monitor, ProtMonitorMovieGain)
    monitor = Monitor()
    assert monitor.getParam('inputProtocol').pointerClass.get() == 'GainProtMovieGain'
    for name in ('samplingInterval', 'monitorTime', 'stddevValue', 'ratio1Value', 'ratio2Value',
                 'doMail', 'emailFrom', 'emailTo', 'smtp', 'alarmOnVerdict', 'alarmOnStatistics'):
        assert monitor.getParam(name) is not None, name
    assert monitor.alarmOnVerdict.get() is True and monitor.monitorTime.get() == 34560
    from pyworkflow.viewer import DESKTOP_TKINTER
    viewers = [v.__name__ for v in Domain.findViewers(monitor, DESKTOP_TKINTER)]
    assert 'ProtMonitorMovieGainViewer' in viewers


class FakeRun:
    """What the monitor uses of the movie gain protocol: its run folder (no run.db:
    its status is unknown, so the monitor never ends on it)."""
    def __init__(self, folder):
        self.folder = str(folder)

    def _getPath(self, *names):
        return os.path.join(self.folder, *names)


class Recorder:
    def __init__(self):
        self.sent = []

    def notify(self, title, message):
        self.sent.append((title, message))


@needs_facilities
def test_every_new_line_is_checked_once_across_samples_and_restarts(tmp_path):
    from scipion_gain.protocols.protocol_monitor_gain import GainMonitor
    run, work = tmp_path / 'run', tmp_path / 'monitor'
    (run / 'extra').mkdir(parents=True)
    work.mkdir()
    (run / 'extra' / 'movie_000003_stats.json').write_text(json.dumps(
        {'verdict': {'flagged': True, 'reasons': ['rows'], 'dqe_loss': 0.02,
                     'sentence': 'a row pattern'}}))
    summary = run / 'summaryForMonitor.txt'
    summary.write_text(monitor_line('movie_000001_residual', FLAT_STATS)
                       + monitor_line('movie_000002_residual', DRIFTED_STATS)
                       + monitor_line('movie_000003_residual', FLAT_STATS) + 'movie_0000')

    def monitor():
        recorder = Recorder()
        made = GainMonitor(FakeRun(run), workingDir=str(work), samplingInterval=1,
                           monitorTime=1, stddevValue=0.04, ratio1Value=1.15, ratio2Value=4.5)
        made.addNotifier(recorder)
        made.initLoop()
        return made, recorder

    first, recorder = monitor()
    assert first.step() is False  # the run's status is unknown: keep watching
    # lines 2 and 3 in one sample (the facilities monitor would see only the last)
    assert [message.split(':')[0] for _, message in recorder.sent] == \
        ['movie_000002_residual', 'movie_000003_residual']
    assert recorder.sent[1] == (ALERT_TITLE, 'movie_000003_residual: Gain check verdict: '
                                'a row pattern (reasons: rows); DQE loss 2.00 %.')
    first.step()  # nothing new
    assert len(recorder.sent) == 2
    with open(summary, 'a') as handle:  # the half line completed, and one more
        handle.write('04_residual: 0.01 0.98 1.02 5.0\n'
                     + monitor_line('movie_000005_residual', FLAT_STATS))
    first.step()
    assert [message.split(':')[0] for _, message in recorder.sent[2:]] == ['movie_000004_residual']
    warnings = (run / 'warningsMonitor.txt').read_text().splitlines()
    assert len(warnings) == 4 and warnings[-1].startswith('movie_000004_residual: The ratio '
                                                          'between the maximum')
    # a restarted monitor does not alarm again on what it has checked
    second, again = monitor()
    second.step()
    assert again.sent == []
    assert (work / 'monitored_movies.txt').read_text().split() == \
        ['movie_%06d_residual' % i for i in range(1, 6)]


# ------------------------------------------------------------------ in a project
DRIFT_AT = 3  # 0-based: movies 4 and 5 (Scipion ids) come after the drift
MOVIES = 5


def demo_detector():
    """The demo's detector before and after its drift (same seeds as ``make demo``)."""
    detector = simulate_gain(demo.SHAPE, rng=11, **demo.GAIN_OPTIONS)
    return detector, demo.drifted_gain(detector.gain, np.random.default_rng(2018))


def final(prot):
    """The protocol as its own run.db has it, once it has ended. The project's refresh
    compares run.db times to the second: a protocol that ends within the second of its
    previous refresh is taken for still running, then for dead (no process), and is
    marked failed in the project, not in its run."""
    return getUpdatedProtocol(prot)


def gui_query(monitor):
    """What the GUI's selection dialog lists for the monitor's input: its tree
    provider, i.e. ``Project.getProtocolCompatibleOutputs`` over the classes
    ``Domain.findClass`` gives for the pointer class."""
    import pyworkflow.gui.project  # noqa: F401  (form.py alone is a circular import)
    from pyworkflow.gui.form import SubclassesTreeProvider
    monitor.getProject().getRuns(refresh=True)  # the GUI's runs graph keeps them fresh
    return [pointer.get() for pointer in
            SubclassesTreeProvider(monitor, monitor.getParam('inputProtocol')).getObjects()]


def test_a_movie_gain_run_joining_a_session_leaves_the_import_free_to_write(tmp_path):
    """A scheduled run (the template) starts on a set that already holds movies: its
    gain reference checks must not leave a read lock on the import's movies.sqlite,
    which would stop a streaming import from ever writing again."""
    import sqlite3
    cwd = os.getcwd()
    project = pwproj.Manager().createProject('gain_lock_%d' % int(time.time() * 1000))
    os.chdir(project.getPath())
    try:
        detector, _ = demo_detector()
        movies = tmp_path / 'movies'
        movies.mkdir()
        for index in range(3):
            demo.acquire(movies, index, detector.gain, 1000 + index)
        gain_file = tmp_path / 'gain_reference.mrc'
        write_mrc(str(gain_file), detector.correction)
        imported = import_movies(project, movies, gain=gain_file)
        prot = project.newProtocol(Domain.findClass('GainProtMovieGain'),
                                   inputMovies=imported.outputMovies)
        assert len([movie.clone() for movie in prot.inputMovies.get()]) == 3  # as the base does
        prot._orientationHint(str(gain_file))
        writer = sqlite3.connect(imported.outputMovies.getFileName(), timeout=0)
        writer.execute('BEGIN EXCLUSIVE')  # 'database is locked' while a read is left open
        writer.rollback()
        writer.close()
    finally:
        os.chdir(cwd)


@pytest.fixture(scope='module')
def monitored_run(tmp_path_factory):
    """A streaming session of the demo's detector: import, movie gain and a
    monitor attached through the GUI query, all running while the movies
    arrive; the session ends once the monitor has alarmed on the drifted ones."""
    Monitor = Domain.findClass('GainProtMonitorMovieGain')
    cwd = os.getcwd()
    project = pwproj.Manager().createProject('gain_monitor_%d' % int(time.time() * 1000))
    os.chdir(project.getPath())
    detector, drifted = demo_detector()
    folder = tmp_path_factory.mktemp('session')
    movies = folder / 'movies'
    movies.mkdir()
    gain_file = folder / 'gain_reference.mrc'
    write_mrc(str(gain_file), detector.correction)

    def acquire(index):
        demo.acquire(movies, index, detector.gain if index < DRIFT_AT else drifted, 1000 + index)

    acquire(0)
    imported = import_movies(project, movies, gain=gain_file, streaming=True, timeout='10m',
                             fileTimeout='1')
    assert wait_for(lambda: refresh(project, imported).hasAttribute('outputMovies'))
    gain_run = run_gain(project, imported, wait=False, numberOfThreads=2)
    monitor = project.newProtocol(Monitor, samplingInterval=1)
    listed = gui_query(monitor)
    monitor.inputProtocol.set(listed[0])  # what choosing it in the dialog does
    project.launchProtocol(monitor, wait=False)
    for index in range(1, MOVIES):
        time.sleep(3)
        acquire(index)
    warnings = Path(gain_run._getPath('warningsMonitor.txt'))
    alarmed = wait_for(lambda: warnings.exists() and 'movie_%06d_' % MOVIES in warnings.read_text())
    open_session = refresh(project, imported).isActive()
    Path(imported._getExtraPath('STOP_STREAMING.TXT')).touch()  # the session ends
    for prot in (imported, gain_run, monitor):
        assert wait_for(lambda: not refresh(project, prot).isActive()), prot.getRunName()
    imported, gain_run, monitor = (final(prot) for prot in (imported, gain_run, monitor))
    yield project, imported, gain_run, monitor, listed, alarmed and open_session
    os.chdir(cwd)


@needs_facilities
def test_the_gui_query_of_the_monitor_lists_the_movie_gain_run_only(monitored_run):
    project, imported, gain_run, monitor, listed, during = monitored_run
    assert [prot.getObjId() for prot in listed] == [gain_run.getObjId()]
    assert listed[0].getClassName() == 'GainProtMovieGain'


@needs_facilities
def test_the_monitor_alarms_on_every_drifted_movie_and_on_no_other(monitored_run):
    project, imported, gain_run, monitor, listed, during = monitored_run
    assert during  # the last movie's alarm came while the session was still open
    assert monitor.isFinished(), monitor.getErrorMessage()  # ended with the gain run
    drifted = list(range(DRIFT_AT + 1, MOVIES + 1))
    # both judges flag the drifted movies (the verdict, or before it exists its fallback)
    for movie_id in range(1, MOVIES + 1):
        stats = stats_of(gain_run, movie_id)
        assert stats['flagged'] is (movie_id in drifted), movie_id
        assert verdict_of(stats).flagged is (movie_id in drifted), movie_id

    warnings = Path(gain_run._getPath('warningsMonitor.txt')).read_text().splitlines()
    alarmed = sorted({int(line[len('movie_'):len('movie_') + 6]) for line in warnings})
    assert alarmed == drifted
    for movie_id in drifted:
        label = 'movie_%06d_residual: ' % movie_id
        mine = [line[len(label):] for line in warnings if line.startswith(label)]
        assert 'Residual gain standard deviation is' in mine[0]
        assert sum(m.startswith('Gain check verdict: ') for m in mine) == 1, mine
    # every line was checked once, in order
    seen = Path(monitor._getPath('monitored_movies.txt')).read_text().split()
    assert seen == ['movie_%06d_residual' % i for i in range(1, MOVIES + 1)]
    log = Path(monitor.getStdoutLog()).read_text()
    assert log.count(ALERT_TITLE) == len(drifted)
    # the facilities summary of the monitor shows the alarms
    assert monitor.summary()[:len(warnings)] == warnings
