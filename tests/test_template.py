"""The gain check workflow template (scipion_gain/templates), end to end.

As ``scipion template`` does it, headless: pyworkflow's template list, the
template's fields filled by their aliases, a project created from the
resulting workflow by pyworkflow's ``create.py`` and all its protocols
scheduled by ``schedule.py`` (which waits 30 s per level of the workflow);
then a streaming session of the demo's detector whose gain drifts after the
third movie, until the monitor has e-mailed the alerts of the drifted movies
to a local mail server. Needs scipion-em-facilities (the ``facilities``
extra) for the monitor: skipped, with the reason, without it.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pyworkflow as pw
import pyworkflow.project as pwproj
from pyworkflow.template import TemplateList

from scipion_gain import demo
from scipion_gain.io import write_mrc
from scipion_gain.protocols import MONITOR_UNAVAILABLE
from scipion_gain.estimator.verdict import verdict_of
from scipion_gain.protocols.monitor_alerts import ALERT_TITLE

from smtp_sink import SmtpSink
from test_monitor import demo_detector, final, gui_query
from test_protocol import refresh, stats_of, wait_for

pytestmark = pytest.mark.skipif(MONITOR_UNAVAILABLE is not None, reason=str(MONITOR_UNAVAILABLE))

TEMPLATE_ID = 'scipion_gain-gain_check_streaming'
ALIASES = ['movies_folder', 'pattern', 'voltage', 'pixel_size', 'dose', 'gain', 'dark',
           'session_timeout', 'file_timeout', 'movie_step', 'gpu', 'monitor_interval', 'mail',
           'email_from', 'email_to', 'smtp']
MOVIES = 5
DRIFT_AT = 3  # 0-based: Scipion ids 4 and 5 come after the drift
SESSION_TIMEOUT = 600


def our_template():
    templates = TemplateList()
    templates.addPluginTemplates()
    found = [t for t in templates.templates if t.getObjId() == TEMPLATE_ID]
    assert len(found) == 1, [t.getObjId() for t in templates.templates]
    return found[0]


def test_the_template_is_in_pyworkflows_list_with_its_parameters():
    template = our_template()
    assert 'scipion-em-facilities' in template.description
    template.replaceEnvVariables()
    template.parseContent()
    params = list(template.getParams().values())
    assert [p.getAlias() for p in params] == ALIASES
    by_alias = {p.getAlias(): p for p in params}
    assert by_alias['movie_step'].getValue() == '10'
    assert by_alias['dark'].getValue() == '' and by_alias['dark'].validate() is None
    assert by_alias['mail'].getValue() == 'true'
    # folder and gain must be given: their defaults do not exist
    assert by_alias['movies_folder'].validate() and by_alias['gain'].validate()


@pytest.fixture(scope='module')
def session(tmp_path_factory):
    cwd = os.getcwd()
    detector, drifted = demo_detector()
    folder = tmp_path_factory.mktemp('microscope')
    movies = folder / 'movies'
    movies.mkdir()
    gain_file = folder / 'gain_reference.mrc'
    write_mrc(str(gain_file), detector.correction)
    demo.acquire(movies, 0, detector.gain, 1000)  # the import validates on a first movie

    with SmtpSink() as mail:
        template = our_template()
        template.replaceEnvVariables()
        template.parseContent()
        values = {'movies_folder': str(movies), 'pattern': 'movie_*.mrc', 'voltage': '300',
                  'pixel_size': '1.0', 'dose': str(demo.DOSE), 'gain': str(gain_file),
                  'dark': '', 'session_timeout': '1h', 'file_timeout': '1', 'movie_step': '1',
                  'gpu': 'false', 'monitor_interval': '2', 'mail': 'true',
                  'email_from': 'scipion@microscope', 'email_to': 'staff@facility',
                  'smtp': mail.address}
        for alias, value in values.items():
            assert template.setParamValue(alias, value) == 1, alias
        workflow = template.createTemplateFile()
        name = 'gain_template_%d' % int(time.time() * 1000)
        scripts = Path(pw.__file__).parent / 'project' / 'scripts'
        subprocess.run([sys.executable, str(scripts / 'create.py'), name, workflow],
                       check=True, timeout=300)
        subprocess.run([sys.executable, str(scripts / 'schedule.py'), name],
                       check=True, timeout=300)
        project = pwproj.Manager().loadProject(name)
        os.chdir(project.getPath())
        runs = {prot.getClassName(): prot for prot in project.getRuns(refresh=True)}
        imported, gain_run = runs['ProtImportMovies'], runs['GainProtMovieGain']
        monitor = runs['GainProtMonitorMovieGain']

        for index in range(1, MOVIES):  # the session: a movie every 3 s
            time.sleep(3)
            demo.acquire(movies, index, detector.gain if index < DRIFT_AT else drifted,
                         1000 + index)
        assert wait_for(lambda: refresh(project, imported).hasAttribute('outputMovies')
                        and imported.outputMovies.getSize() == MOVIES, SESSION_TIMEOUT)
        # the monitor starts last (schedule.py waits 30 s per level), then alarms
        # while the session is still open
        warnings = Path(gain_run._getPath('warningsMonitor.txt'))
        alarmed = wait_for(lambda: len(mail.messages) == MOVIES - DRIFT_AT
                           and 'movie_%06d_' % MOVIES in warnings.read_text(), SESSION_TIMEOUT)
        during = alarmed and refresh(project, imported).isActive()
        Path(imported._getExtraPath('STOP_STREAMING.TXT')).touch()  # the session ends
        for prot in (imported, gain_run, monitor):
            assert wait_for(lambda: not refresh(project, prot).isActive(), SESSION_TIMEOUT, 2), \
                prot.getRunName()
        runs = {name: final(prot) for name, prot in runs.items()}
        yield project, runs, mail.messages, during
    os.chdir(cwd)


def test_the_project_has_the_templates_protocols_linked(session):
    project, runs, messages, during = session
    assert set(runs) == {'ProtImportMovies', 'GainProtMovieGain', 'GainProtMonitorMovieGain'}
    imported, gain_run = runs['ProtImportMovies'], runs['GainProtMovieGain']
    monitor = runs['GainProtMonitorMovieGain']
    for prot in runs.values():
        assert prot.isFinished(), (prot.getRunName(), prot.getErrorMessage())
    assert gain_run.inputMovies.getObjValue().getObjId() == imported.getObjId()
    assert monitor.inputProtocol.get().getObjId() == gain_run.getObjId()
    assert monitor.doMail.get() and monitor.emailTo.get() == 'staff@facility'
    assert gain_run.movieStep.get() == 1 and gain_run.useGpu.get() is False
    # the template's frames: a count (no frame step, which would override it)
    assert gain_run.framesPerMovie.get() == 20 and gain_run.frameStep.get() == 0
    # the GUI's query for a new monitor's input lists the template's movie gain run
    new_monitor = project.newProtocol(type(monitor))
    assert [prot.getObjId() for prot in gui_query(new_monitor)] == [gain_run.getObjId()]


def test_the_drifted_movies_are_flagged_and_e_mailed(session):
    project, runs, messages, during = session
    gain_run = runs['GainProtMovieGain']
    assert during  # alarmed and e-mailed before the session ended
    drifted = list(range(DRIFT_AT + 1, MOVIES + 1))
    flagged = sorted(item.getObjId() for item in gain_run.residualGains if item._gainFlagged.get())
    assert flagged == drifted
    assert [i for i in range(1, MOVIES + 1)
            if verdict_of(stats_of(gain_run, i)).flagged] == drifted
    warnings = Path(gain_run._getPath('warningsMonitor.txt')).read_text()
    assert sorted({int(line[6:12]) for line in warnings.splitlines()}) == drifted
    # one e-mail per drifted movie, with all its alarms, from the template's sender
    assert [m['Subject'] for m in messages] == [ALERT_TITLE] * len(drifted)
    assert {(m['From'], m['To']) for m in messages} == {('scipion@microscope', 'staff@facility')}
    bodies = sorted(m.get_payload() for m in messages)
    for movie_id, body in zip(drifted, bodies):
        assert body.startswith('movie_%06d_residual: ' % movie_id)
        assert 'Residual gain standard deviation is' in body and 'Gain check verdict: ' in body
