"""The movie-gain viewer's plots and the report, from a real GainProtMovieGain run (no display).

One protocol run (4 movies, residual mode; movies 2 and 3 recorded after the
detector changed, so flagged) is shared with tests/test_viewer_gui.py.
"""
import io
import os
import subprocess
import sys

import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from report_helpers import shared_protocol_run
from scipion_gain.report import write_report
from scipion_gain.report.run_folder import load

pytestmark = pytest.mark.slow

DISPLAYS = ('displayMovieGain', 'displayAccumulated', 'displayHistograms', 'displayTimeline',
            'displayDefects')


def pixel_variance(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png')
    buffer.seek(0)
    return float(imread(buffer, format='png')[..., :3].var())


@pytest.fixture(scope='module')
def run():
    return shared_protocol_run()


@pytest.fixture
def viewer(run, monkeypatch):
    from scipion_gain.viewers import GainMovieGainViewer
    project, prot, _ = run
    monkeypatch.chdir(project.getPath())
    viewer = GainMovieGainViewer(project=project, protocol=prot)
    viewer.setProtocol(prot)
    return viewer


def test_the_viewer_is_registered_for_the_protocol(run):
    from pyworkflow.plugin import Domain
    from pyworkflow.viewer import DESKTOP_TKINTER
    from scipion_gain.viewers import GainMovieGainViewer
    _, prot, _ = run
    assert GainMovieGainViewer in Domain.findViewers(prot, DESKTOP_TKINTER)


def test_every_viewer_plot_renders_from_the_run_folder(viewer):
    for name in DISPLAYS:
        title, fig = viewer.getFigure(name)
        assert isinstance(fig, Figure) and title
        assert pixel_variance(fig) > 1e-3, f"{name} looks blank"


def test_the_time_line_marks_the_flagged_movies(viewer):
    _, fig = viewer.getFigure('displayTimeline')
    assert '2 of 4 movies flagged; first at movie 2 (id 3)' in fig._suptitle.get_text()
    for ax in fig.axes:
        rings = [line for line in ax.lines if line.get_gid() == 'flagged']
        assert rings and all(list(r.get_xdata()) == [2, 3] for r in rings)


def test_movie_choice_and_histogram_list(viewer):
    viewer.movieIndex.set(3)
    title, fig = viewer.getFigure('displayMovieGain')
    assert 'movie 3' in title and 'Residual' in title
    flags = fig._supxlabel.get_text().split('flags:')[1]
    assert 'std' in flags and 'percentile_ratio' in flags
    viewer.movieIndex.set(-1)
    assert 'movie 3' in viewer.getFigure('displayMovieGain')[0]
    viewer.histogramMovies.set('0, 2-3')
    _, fig = viewer.getFigure('displayHistograms')
    assert len([line for line in fig.axes[0].lines if line.get_gid()]) == 3


def test_unanalysed_movies_give_a_message_not_a_crash(viewer):
    from pyworkflow.viewer import MessageView
    viewer.movieIndex.set(17)
    views = viewer._showMovieGain()
    assert isinstance(views[0], MessageView)
    assert 'Movie 17 has not been analysed. Analysed movies: 0-3.' in views[0].getMessage()
    viewer.histogramMovies.set('0 9')
    assert 'Not analysed: 9' in viewer._showHistograms()[0].getMessage()
    viewer.histogramMovies.set('zero')
    assert 'Cannot read' in viewer._showHistograms()[0].getMessage()


def test_defects_of_each_source(viewer):
    for source, words in ((0, 'accumulated'), (1, 'movie'), (2, 'gain reference')):
        viewer.defectSource.set(source)
        viewer.movieIndex.set(0)
        title, fig = viewer.getFigure('displayDefects')
        assert words in title
        assert pixel_variance(fig) > 1e-3
    # The reference holds the simulated hot pixels (its correction is far below 1 there).
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(text.startswith('hot pixel') for text in legend), legend


def test_report_of_a_real_run_folder(run, tmp_path, monkeypatch):
    project, prot, _ = run
    monkeypatch.chdir(project.getPath())
    data = load(prot._getPath())
    assert [m.index for m in data.movies] == [0, 1, 2, 3] and data.flagged_indices() == [2, 3]
    index = write_report(prot._getPath(), tmp_path / 'report')
    page = index.read_text()
    assert page.count("<tr class=flagged>") == 2
    for name in ('timeline', 'histograms', 'accumulated_gain', 'gain_reference', 'defects',
                 'movie_000003_gain'):
        png = tmp_path / 'report' / f'{name}.png'
        assert imread(str(png))[..., :3].var() > 1e-3, name


def test_viewers_import_without_a_display():
    env = {k: v for k, v in os.environ.items() if k != 'DISPLAY'}
    # (pyworkflow itself imports pyplot; what matters is that no Tk root is made)
    code = ("import sys, scipion_gain.viewers as v; "
            "assert v.GainMovieGainViewer._environments; "
            "import tkinter; assert tkinter._default_root is None")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
