"""The movie-gain viewer's plots and the report, from a real GainProtMovieGain run (no display).

One protocol run (4 movies, ids 1-4, residual mode; movies 3 and 4 recorded
after the detector changed, so flagged) is shared with tests/test_viewer_gui.py.
"""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from report_helpers import shared_protocol_run
from scipion_gain.report import write_report
from scipion_gain.estimator.verdict import verdict_of
from scipion_gain.report.run_folder import load

pytestmark = pytest.mark.slow

DISPLAYS = ('displayMovieGain', 'displaySpectrum', 'displayAccumulated', 'displayHistograms',
            'displayTimeline', 'displayDefects')


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


def verdicts_in_the_run_folder(prot):
    """{movie id: verdict flagged} from the stats files, as run_folder.verdict_of reads them."""
    out = {}
    for path in sorted(Path(prot._getExtraPath()).glob('movie_*_stats.json')):
        stats = json.loads(path.read_text())
        out[stats['movie_id']] = verdict_of(stats).flagged
    return out


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


def test_list_time_line_summary_and_warnings_show_the_same_verdicts_by_id(run, viewer):
    _, prot, _ = run
    truth = verdicts_in_the_run_folder(prot)
    assert sorted(truth) == [1, 2, 3, 4]
    assert truth[3] and truth[4]  # recorded after the detector changed
    flagged = [i for i, f in sorted(truth.items()) if f]
    title, sentence, columns, rows, marks = viewer.getTable()
    assert [row[0] for row in rows] == [1, 2, 3, 4]
    assert [row[1] for row in rows] == ['movie_%03d.mrc' % i for i in range(4)]
    assert [row[0] for row, f in zip(rows, marks) if f] == flagged
    assert [row[3] for row in rows] == ['flagged' if truth[i] else 'ok' for i in (1, 2, 3, 4)]
    _, fig = viewer.getFigure('displayTimeline')
    crosses = [line for line in fig.axes[0].lines if line.get_gid() == 'verdict-flagged']
    assert list(crosses[0].get_xdata()) == flagged
    assert sentence in prot.summary()
    warnings = Path(prot._getPath('warnings.txt')).read_text().splitlines()
    assert [int(line[len('movie_'):len('movie_') + 6]) for line in warnings] == flagged
    for item in prot.residualGains:
        assert item._verdictFlagged.get() is truth[item.getObjId()]


def test_movie_choice_by_id_and_histogram_list(viewer):
    viewer.movieId.set(4)
    title, fig = viewer.getFigure('displayMovieGain')
    assert title == 'Residual gain of movie 4 (movie_003.mrc)'
    low, high = fig.axes[0].images[0].get_clim()  # flagged: its own symmetric scale
    assert low + high == pytest.approx(2.0) and high >= 1.05
    assert fig.axes[1].get_gid() == ('own-scale' if high > 1.05 else 'residual-scale')
    viewer.movieId.set(1)
    assert viewer.getFigure('displayMovieGain')[1].axes[0].images[0].get_clim() == \
        pytest.approx((0.95, 1.05))
    viewer.residualRange.set(3)
    assert viewer.getFigure('displayMovieGain')[1].axes[0].images[0].get_clim() == \
        pytest.approx((0.97, 1.03))
    flags = fig._supxlabel.get_text().split("over the paper's thresholds:")[1].split('\n')[0]
    assert flags.strip() == 'std, p97.5/p2.5'

    viewer.movieId.set(-1)
    assert 'movie 4' in viewer.getFigure('displayMovieGain')[0]
    assert 'cross strength' in viewer.getFigure('displaySpectrum')[1].axes[0].get_title()
    viewer.histogramMovies.set('1, 3-4')
    _, fig = viewer.getFigure('displayHistograms')
    assert len([line for line in fig.axes[0].lines if line.get_gid()]) == 3
    note = next(t for t in fig.texts if t.get_gid() == 'histogram-note').get_text()
    assert note == 'Shown: movies 1, 3-4 (the movies asked for). Left out: movie 2.'


def test_unanalysed_movies_give_a_message_not_a_crash(viewer):
    from pyworkflow.viewer import MessageView
    viewer.movieId.set(17)
    views = viewer._showMovieGain()
    assert isinstance(views[0], MessageView)
    assert 'Movie 17 has not been analysed. Analysed movies: 1-4.' in views[0].getMessage()
    viewer.histogramMovies.set('1 9')
    assert 'Not analysed: 9' in viewer._showHistograms()[0].getMessage()
    viewer.histogramMovies.set('zero')
    assert 'Cannot read' in viewer._showHistograms()[0].getMessage()


def test_defects_of_each_source_match_the_json(run, viewer):
    _, prot, _ = run
    for source, words in ((0, 'accumulated'), (1, 'movie 1'), (2, 'gain reference')):
        viewer.defectSource.set(source)
        viewer.movieId.set(1)
        title, fig = viewer.getFigure('displayDefects')
        assert words in title
        assert pixel_variance(fig) > 1e-3
    # the reference holds the simulated hot pixels; the finder sees them there
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(text.startswith('hot pixel: ') for text in legend), legend
    counts = json.loads(Path(prot._getExtraPath('movie_000001_stats.json')).read_text())[
        'defects']['counts']
    viewer.defectSource.set(1)
    legend = [t.get_text() for t in
              viewer.getFigure('displayDefects')[1].axes[0].get_legend().get_texts()]
    for key, name in (('dead_pixels', 'dead pixel'), ('hot_pixels', 'hot pixel')):
        if counts[key]:
            assert '%s: %d' % (name, counts[key]) in legend


def test_report_of_a_real_run_folder(run, tmp_path, monkeypatch):
    project, prot, _ = run
    monkeypatch.chdir(project.getPath())
    data = load(prot._getPath())
    assert data.ids() == [1, 2, 3, 4]
    assert all(m.sum_path is not None for m in data.movies)  # the protocol saves the sums
    index = write_report(prot._getPath(), tmp_path / 'report')
    page = index.read_text()
    assert page.count("<tr class=flagged") == len(data.flagged_ids())
    assert data.project in page
    for name in ('timeline', 'histograms', 'accumulated_gain', 'gain_reference', 'defects',
                 'movie_000001_spectrum', 'movie_000004_gain'):
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


def test_scipions_table_of_the_gain_maps_leads_with_the_verdict_and_statistics(run, monkeypatch):
    """The table Scipion opens for residualGains, built by pwem's own metadata-viewer code
    from the set's sqlite and the column order the viewers register for SetOfGainMaps."""
    from metadataviewer.model.object_manager import ObjectManager
    from pwem.viewers.mdviewer.viewer import MDView
    from pwem.viewers.mdviewer.sqlite_dao import ScipionSetsDAO
    from scipion_gain.objects import SetOfGainMaps
    import scipion_gain.viewers  # noqa: F401  (registers the columns, as Scipion's viewer lookup does)
    project, prot, _ = run
    monkeypatch.chdir(project.getPath())
    output = prot.residualGains
    assert isinstance(output, SetOfGainMaps)
    visible, order, _ = MDView(output, prot, None).getVisibleAndOrderLabels()
    assert order.split()[:6] == ['id', '_verdictFlagged', '_verdictReasons', '_gainStdPercent',
                                 '_gainPercentileRatio', '_gainMaxRatio']
    dao = ScipionSetsDAO(os.path.join(project.getPath(), output.getFileName()))
    manager = ObjectManager()
    manager.setColumnsOrder(order.split())
    manager.setVisibleLabels(visible.split())
    table = dao.getTables()['objects']
    dao.fillTable(table, manager)
    manager.setColumnsIndex(table)
    columns = sorted(table.getColumns(), key=lambda c: c.getIndex())
    shown = [c.getName() for c in columns if c.isVisible()]
    assert shown[:4] == ['id', '_verdictFlagged', '_verdictReasons', '_gainStdPercent']
    assert not any(name.startswith('_acquisition') for name in shown)
    row = dao.getTableRow('objects', 0)
    stats = json.loads(Path(prot._getExtraPath('movie_%06d_stats.json' % row['id'])).read_text())
    # two decimals (the viewer's default) of a std in per cent: 0.0136 -> 1.36
    assert row['_gainStdPercent'] == pytest.approx(100 * stats['statistics']['std'])
    assert row['_defectPixels'] == stats['defects']['pixels']
    assert bool(row['_verdictFlagged']) is verdict_of(stats).flagged
