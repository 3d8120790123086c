"""Figures and the HTML report, rendered headless from a run folder the estimator made."""
import base64
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from report_helpers import make_run_folder
from scipion_gain.cli import main
from scipion_gain.estimator import Thresholds
from scipion_gain.report import figures, write_report
from scipion_gain.report.html import report_figures
from scipion_gain.report.run_folder import load

N_MOVIES, DRIFT_AT = 6, 4


@pytest.fixture(scope='module')
def residual_run(tmp_path_factory):
    """Residual run: movies 0-3 match the reference, 4-5 come after the detector drifted."""
    root, flagged = make_run_folder(tmp_path_factory.mktemp('run') / 'Runs' / '000042_GainProtMovieGain',
                                    n_movies=N_MOVIES, drift_at=DRIFT_AT)
    assert flagged == [4, 5], "the fake run must flag exactly the movies after the drift"
    return root


@pytest.fixture(scope='module')
def gain_run(tmp_path_factory):
    """Gain (not residual) run of a detector with a dead column, a broken row, hot and dead pixels."""
    root, _ = make_run_folder(tmp_path_factory.mktemp('gainrun'), n_movies=2, residual=False)
    return root


def png_pixels(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png')
    buffer.seek(0)
    return imread(buffer, format='png')[..., :3]


def pixel_variance(fig):
    return float(png_pixels(fig).var())


def test_pixel_variance_tells_a_blank_figure():
    blank = Figure(figsize=(4, 3))
    blank.add_subplot().set_axis_off()
    assert pixel_variance(blank) < 1e-8


def test_run_folder_is_read(residual_run):
    data = load(residual_run)
    assert [m.index for m in data.movies] == list(range(N_MOVIES))
    assert data.kind == 'residual'
    assert data.flagged_indices() == [4, 5]
    assert all(m.gain_path is not None and m.defects_path is not None for m in data.movies)
    assert data.accumulated_path is not None and data.accumulated_stats is not None
    assert len(data.warnings) == 2
    assert data.thresholds == Thresholds()
    gain = data.movies[0].load_gain()
    assert gain.dtype == np.float32 and gain.shape == (96, 128)


def test_every_report_figure_renders_and_is_not_blank(residual_run):
    rendered = report_figures(load(residual_run))
    names = [name for name, _, _ in rendered]
    for expected in ('timeline', 'histograms', 'accumulated_gain', 'defects',
                     'movie_000001_gain', 'movie_000006_gain'):
        assert expected in names
    for name, caption, fig in rendered:
        assert isinstance(fig, Figure) and caption
        assert pixel_variance(fig) > 1e-3, f"{name} looks blank"


def test_gain_image_clips_to_percentiles_and_has_a_colour_bar(gain_run):
    data = load(gain_run)
    record = data.movies[0]
    gain, defects = record.load_gain(), record.load_defects()
    fig = figures.gain_image_figure(gain, defects, stats=record.stats)
    image_axes, colour_axes = fig.axes[0], fig.axes[1]
    low, high = image_axes.images[0].get_clim()
    good = gain[~defects]
    # A broken row (30 % of the signal: correction ~3) must not take the grey scale.
    assert np.percentile(good, 0.5) <= low < high <= np.percentile(good, 99.9)
    assert high < 1.5 and gain.max() > 2
    assert colour_axes.get_ylabel().startswith('gain')
    assert pixel_variance(fig) > 1e-3


def test_timeline_marks_flagged_movies_and_draws_thresholds(residual_run):
    data = load(residual_run)
    fig = figures.run_timeline_figure(data)
    axes = fig.axes
    assert len(axes) == 4
    thresholds = Thresholds()
    for ax, threshold in zip(axes, (None, thresholds.std, thresholds.percentile_ratio,
                                    thresholds.max_ratio)):
        rings = [line for line in ax.lines if line.get_gid() == 'flagged']
        assert rings, "flagged movies must be marked on every panel"
        for ring in rings:
            assert list(ring.get_xdata()) == [4, 5]
        first = [line for line in ax.lines if line.get_gid() == 'first-flagged']
        assert len(first) == 1 and first[0].get_xdata()[0] == 4
        drawn = [line.get_ydata()[0] for line in ax.lines if line.get_gid() == 'threshold']
        assert drawn == ([] if threshold is None else [threshold])
    # The std curve crosses its threshold where the flags start.
    std_curve = axes[1].lines[0]
    assert np.all(np.asarray(std_curve.get_ydata())[:DRIFT_AT] < thresholds.std)
    assert np.all(np.asarray(std_curve.get_ydata())[DRIFT_AT:] > thresholds.std)
    assert '2 of 6 movies flagged; first at movie 4 (id 5)' in fig._suptitle.get_text()
    assert pixel_variance(fig) > 1e-3


def test_timeline_without_flags_marks_nothing():
    stats = [{'statistics': {'std': 0.01, 'p2.5': 0.98, 'p50': 1.0, 'p97.5': 1.02, 'max': 1.1},
              'ratios': {'p97.5/p2.5': 1.04, 'max/p97.5': 1.08}, 'flagged': False}
             for _ in range(5)]
    fig = figures.timeline_figure(stats)
    assert not [line for ax in fig.axes for line in ax.lines
                if line.get_gid() in ('flagged', 'first-flagged')]
    assert '0 of 5 movies flagged' in fig._suptitle.get_text()


def test_timeline_copes_with_an_infinite_ratio():
    stats = [{'statistics': {'std': 0.5, 'p2.5': 0.0, 'p97.5': 1.0, 'max': 3.0},
              'ratios': {'p97.5/p2.5': np.finfo(float).max, 'max/p97.5': 3.0}, 'flagged': True},
             {'statistics': {'std': 0.01, 'p2.5': 0.98, 'p97.5': 1.02, 'max': 1.1},
              'ratios': {'p97.5/p2.5': 1.04, 'max/p97.5': 1.08}, 'flagged': False}]
    fig = figures.timeline_figure(stats)
    assert pixel_variance(fig) > 1e-3


def test_histograms_highlight_first_and_last(residual_run):
    data = load(residual_run)
    fig = figures.run_histogram_figure(data)
    lines = {line.get_gid(): line for line in fig.axes[0].lines if line.get_gid()}
    assert sorted(lines) == [f"histogram-{i}" for i in range(N_MOVIES)]
    assert lines['histogram-0'].get_color() == figures.FIRST_COLOUR
    assert lines[f'histogram-{N_MOVIES - 1}'].get_color() == figures.LAST_COLOUR
    assert lines['histogram-0'].get_linewidth() > lines['histogram-1'].get_linewidth()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith('first: movie 0') and labels[-1].startswith('last: movie 5')
    # After the drift the residual is wider: the last histogram is lower at its peak.
    assert np.max(lines['histogram-5'].get_ydata()) < np.max(lines['histogram-0'].get_ydata())
    assert pixel_variance(fig) > 1e-3


def test_histogram_selection_spreads_over_a_long_run(residual_run):
    records = load(residual_run).movies
    chosen = figures.select_movies(records, most=3)
    assert [r.index for r in chosen] == [0, 2, 5]
    assert [r.index for r in figures.select_movies(records, indices=[1, 3])] == [1, 3]


def test_defects_are_classified():
    rng = np.random.default_rng(0)
    gain = (1 + 0.02 * rng.standard_normal((64, 80))).astype(np.float32)
    gain[10, :] = 3.0                 # a row recording at a third: broken row
    gain[:, 33] *= 0.7                # a column recording too much
    gain[40, 50] = 0.1                # hot pixel (needs a tenth of the correction)
    gain[5, 5] = 4.0                  # cold pixel
    defects = np.zeros(gain.shape, bool)
    defects[:, 70] = True             # dead column, no signal
    gain[defects] = 1
    labels = figures.classify_defects(gain, defects)
    assert np.all(labels[:, 70] == 1)
    assert np.all(labels[10, :70] == 5)
    assert np.all(labels[:10, 33] == 4)
    assert labels[40, 50] == 2 and labels[5, 5] == 3
    assert (labels == 0).mean() > 0.95
    counts = figures.defect_counts(labels)
    assert counts['no signal'] == 64
    fig = figures.defect_figure(labels)
    assert pixel_variance(fig) > 1e-3
    rings = {c.get_gid(): c for c in fig.axes[0].collections}
    assert sorted(rings) == ['defect-2', 'defect-3']  # single pixels are ringed, lines are not
    assert rings['defect-2'].get_offsets().tolist() == [[50, 40]]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(text.startswith('broken row') for text in legend)


def test_defect_map_of_a_gain_run_finds_the_simulated_defects(gain_run):
    data = load(gain_run)
    gain, defects = data.load_accumulated()
    labels = figures.classify_defects(gain, defects)
    counts = figures.defect_counts(labels)
    assert counts.get('no signal', 0) >= 96          # the dead column
    assert counts.get('broken row', 0) >= 120         # the row at 30 %
    assert counts.get('hot pixel (correction < 1/ratio)', 0) >= 3
    assert pixel_variance(figures.run_defect_figure(data)) > 1e-3


def test_report_command_writes_pngs_and_a_self_contained_page(residual_run, tmp_path, capsys):
    out = tmp_path / 'report'
    assert main(['report', str(residual_run), '-o', str(out)]) == 0
    assert '2 flagged' in capsys.readouterr().out
    pngs = sorted(p.name for p in out.glob('*.png'))
    for name in ('timeline.png', 'histograms.png', 'accumulated_gain.png', 'defects.png',
                 'movie_000001_gain.png', 'movie_000006_gain.png'):
        assert name in pngs
    page = (out / 'index.html').read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == len(pngs)
    assert all(src.startswith('data:image/png;base64,') for src in sources)
    for src in sources:
        image = imread(io.BytesIO(base64.b64decode(src.split(',', 1)[1])), format='png')
        assert image[..., :3].var() > 1e-3
    rows = re.findall(r"<tr( class=flagged)?><td>(\d+)</td>", page)
    assert [int(index) for _, index in rows] == list(range(N_MOVIES))
    assert [int(index) for flag, index in rows if flag] == [4, 5]
    assert 'class=over' in page
    assert not list(out.glob('.*.tmp'))


def test_report_of_loose_statistics_files(residual_run, tmp_path):
    files = [residual_run / 'extra' / f'movie_{i:06d}_stats.json' for i in (1, 6)]
    index = write_report(files, tmp_path / 'r')
    page = index.read_text()
    assert index.name == 'index.html' and 'timeline' in page
    assert (tmp_path / 'r' / 'timeline.png').exists()


def test_report_of_an_estimate_json(tmp_path):
    """`scipion-gain estimate --json` output (no movie index) is accepted."""
    from scipion_gain.simulate import simulate_gain, simulate_movie
    true = simulate_gain((64, 64), 1)
    movie = simulate_movie(tmp_path / 'm.mrc', (64, 64), 3, true.gain, dose=5, rng=2)
    assert main(['estimate', str(movie), '-o', str(tmp_path / 'g.mrc'),
                 '--json', str(tmp_path / 'g.json'), '-q']) == 0
    assert main(['report', str(tmp_path / 'g.json'), '-o', str(tmp_path / 'r')]) == 0
    assert (tmp_path / 'r' / 'movie_000000_gain.png').exists()


def test_report_of_an_xmipp_style_summary(residual_run, tmp_path):
    """A folder with only summary.txt (what Xmipp's protocol writes) still gives the time line."""
    folder = tmp_path / 'xmipp'
    folder.mkdir()
    (folder / 'summary.txt').write_text((residual_run / 'summary.txt').read_text())
    data = load(folder)
    assert len(data.movies) == N_MOVIES and data.flagged_indices() == [4, 5]
    original = json.loads((residual_run / 'extra' / 'movie_000001_stats.json').read_text())
    assert data.movies[0].value('std') == pytest.approx(original['statistics']['std'], abs=1e-6)
    assert main(['report', str(folder), '-o', str(tmp_path / 'r')]) == 0
    assert (tmp_path / 'r' / 'timeline.png').exists()


@pytest.mark.parametrize('make_input, message', [
    (lambda tmp: tmp / 'missing', 'no such file'),
    (lambda tmp: tmp, 'no movie statistics found'),
])
def test_report_bad_input_is_one_line(tmp_path, capsys, make_input, message):
    assert main(['report', str(make_input(tmp_path)), '-o', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_report_package_imports_neither_pyworkflow_nor_pwem():
    code = ("import sys, scipion_gain.report, scipion_gain.report.figures, "
            "scipion_gain.report.run_folder, scipion_gain.report.html, scipion_gain.commands.report; "
            "bad = [m for m in ('pyworkflow', 'pwem', 'matplotlib.pyplot') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_fast_histogram_counts_match_numpy():
    values = np.random.default_rng(3).normal(1, 0.05, 200_000).astype(np.float32)
    edges = np.linspace(0.9, 1.1, 121)
    expected, _ = np.histogram(values, bins=edges)
    counts = figures._uniform_histogram(values, 0.9, 1.1, 120)
    assert counts.sum() == expected.sum()
    assert np.abs(counts - expected).max() <= 2  # at most float rounding at bin edges
