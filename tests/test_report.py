"""Figures and the HTML report, rendered headless from a run folder the estimator made."""
import base64
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from report_helpers import make_run_folder
from scipion_gain.cli import main
from scipion_gain.estimator import Thresholds
from scipion_gain.estimator.defects import (BROKEN_ROW, DEAD_COLUMN, DEAD_PIXEL, HOT_PIXEL,
                                            LABELS)
from scipion_gain.report import figures, write_report
from scipion_gain.report.html import report_figures
from scipion_gain.estimator.verdict import paper_over, verdict_of
from scipion_gain.report.run_folder import MovieRecord, conclusion, load

N_MOVIES, DRIFT_AT = 6, 4
DRIFTED = [5, 6]  # movie ids after the drift (ids count from 1)


@pytest.fixture(scope='module')
def residual_run(tmp_path_factory):
    """Residual run: movies 1-4 match the reference, 5-6 come after the detector drifted."""
    root, flagged = make_run_folder(tmp_path_factory.mktemp('run') / 'Runs' / '000042_GainProtMovieGain',
                                    n_movies=N_MOVIES, drift_at=DRIFT_AT)
    # the analyses' own verdicts: the drifted movies flagged, the others not
    assert flagged == DRIFTED, "the analyses must flag exactly the movies after the drift"
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


def test_run_folder_is_read_with_movie_ids(residual_run):
    data = load(residual_run)
    assert data.ids() == list(range(1, N_MOVIES + 1))
    assert data.kind == 'residual'
    assert data.flagged_ids() == DRIFTED
    assert data.project == residual_run.parent.parent.name
    assert data.protocol == '000042_GainProtMovieGain'
    record = data.movie(5)
    assert record.label == 'movie 5 (movie_004.mrc)'
    assert all(m.gain_path and m.defects_path and m.sum_path for m in data.movies)
    assert all(m.acquired is not None for m in data.movies)
    first, last = data.session_span()
    assert first <= last
    assert data.accumulated_path is not None and data.accumulated_stats is not None
    assert len(data.warnings) == 2
    assert data.thresholds == Thresholds()
    gain = data.movies[0].load_gain()
    assert gain.dtype == np.float32 and gain.shape == (96, 128)
    labels = data.movies[0].load_defect_labels()
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= set(LABELS)
    with pytest.raises(KeyError):
        data.movie(0)


# ------------------------------------------------------------------ the one verdict
def _stats(std=0.01, flagged=False, assessment=None, verdict=None):
    stats = {'statistics': {'std': std, 'p2.5': 0.98, 'p50': 1.0, 'p97.5': 1.02, 'max': 1.1},
             'ratios': {'p97.5/p2.5': 1.04, 'max/p97.5': 1.08},
             'flags': {'std': std > 0.04, 'percentile_ratio': False, 'max_ratio': False},
             'flagged': flagged, 'thresholds': {'std': 0.04, 'percentile_ratio': 1.15,
                                                'max_ratio': 4.5}}
    if assessment is not None:
        stats['assessment'] = assessment
    if verdict is not None:
        stats['verdict'] = verdict
    return stats


ASSESSMENT = {'flagged': True, 'components': [
    {'name': 'columns', 'found': True, 'size': 0.031, 'z': 40},
    {'name': 'sectors', 'found': False, 'size': 0.002, 'z': 1},
    {'name': 'pixels', 'found': True, 'size': 0.001, 'count': 12, 'z': 9}]}


def test_the_verdict_is_the_stats_verdict_else_the_assessment_else_the_paper():
    given = verdict_of(_stats(std=0.05, flagged=True, assessment=ASSESSMENT,
                              verdict={'flagged': False, 'reasons': [], 'dqe_loss': 0.004,
                                       'sentence': 'no problem found'}))
    assert (given.flagged, given.source, given.dqe_loss) == (False, 'verdict', 0.004)
    fallback = verdict_of(_stats(std=0.01, flagged=False, assessment=ASSESSMENT))
    assert fallback.flagged and fallback.source == 'assessment'
    assert fallback.reasons == ['column pattern 3.10 % (40 times its noise)',
                               'pixel-to-pixel structure 0.10 % (9 times its noise)']
    old = verdict_of(_stats(std=0.05, flagged=True))
    assert old.flagged and old.source == 'paper flags'
    assert old.reasons == ['std 0.0500 > 0.04']
    assert not verdict_of(_stats()).flagged


def test_paper_flags_are_reported_only_above_their_threshold():
    stats = _stats(std=0.03)
    stats['flags']['std'] = True  # a stale flag must not make a value below 0.04 "over"
    assert paper_over(stats) == {}
    assert paper_over(_stats(std=0.05)) == {'std': (0.05, 0.04)}


def _records(flags, files=True):
    return [MovieRecord(index=i, stats=_stats(verdict={'flagged': f, 'reasons': ['column pattern 6.6 %'] if f else []}),
                        movie_id=i + 1, kind='residual',
                        movie_file=f'/data/movie_{i:03d}.mrc' if files else None)
            for i, f in enumerate(flags)]


def test_conclusion_sentences():
    assert conclusion(_records([False] * 10)) == 'No problem found in 10 movies (movies 1-10).'
    assert conclusion(_records([False] * 6 + [True] * 4)) == (
        'Reference consistent with movies 1-6; from movie 7 (file movie_006.mrc) the residual '
        'is flagged: column pattern 6.6 %; acquire a new gain reference.')
    text = conclusion(_records([False, True, False, False, True, True]))
    assert text.startswith('Reference consistent with movies 1, 3-4; from movie 5 (file '
                           'movie_004.mrc)')
    assert text.endswith('Also flagged alone before that: movie 2 (file movie_001.mrc): '
                         'column pattern 6.6 %.')
    assert conclusion(_records([True] * 3)).startswith(
        'From the first analysed movie, movie 1 (file movie_000.mrc), the residual is flagged')
    # without a reference the conclusion says what to do too (it stopped at the reasons)
    raw = _records([True] * 2)
    for record in raw:
        record.kind = 'gain'
    assert conclusion(raw) == (
        'From the first analysed movie, movie 1 (file movie_000.mrc), the estimated gain is '
        'flagged: column pattern 6.6 %; the movies hold detector structure: correct them with '
        'a gain reference.')
    raw = _records([False, True])
    for record in raw:
        record.kind = 'gain'
    assert conclusion(raw).endswith('; the detector changed there: correct the movies from '
                                    'there on with a new gain reference.')
    alone = conclusion(_records([False, True, False]))
    assert alone.startswith('Flagged alone: movie 2') and 'watch the next movies' in alone
    # the DQE loss the verdict weighs leads the reasons; the significance is in words
    costly = _records([False, True])
    costly[1].stats['verdict'].update(dqe_loss=0.3305, reasons=['column pattern 9.65 % (z 1962)'])
    assert conclusion(costly) == (
        "Reference consistent with movie 1; from movie 2 (file movie_001.mrc) the residual is "
        "flagged: it loses 33.05 % of the detector's DQE at that movie's dose, from column "
        "pattern 9.65 % (1962 times its noise); acquire a new gain reference.")


def test_the_verdict_words_its_numbers_for_a_facility_user():
    from scipion_gain.estimator.verdict import dqe_percent, judge
    assessment = {'components': [
        {'name': 'columns', 'found': True, 'size': 0.0965, 'z': 1962.4, 'variance': 0.0093},
        {'name': 'sectors', 'found': True, 'size': 0.2086, 'z': 6.2, 'variance': 0.0087}],
        'noise': {'pixel_std': 0.01}}
    verdict = judge(assessment, electrons=28.3)
    assert verdict['reasons'] == ['column pattern 9.65 % (1962 times its noise)',
                                  'step between readout sectors 20.86 % (6 times its noise)']
    assert f"it costs {dqe_percent(verdict['dqe_loss'])} of the DQE" in verdict['sentence']
    assert dqe_percent(0.3305) == '33.05 %' and dqe_percent(0.00004) == '0.004 %'
    # files written before keep their numbers and read in the same words
    old = verdict_of({'verdict': {'flagged': True, 'dqe_loss': 0.04,
                                  'reasons': ['column pattern 3.77 % (z 3395)'],
                                  'sentence': 'the reference leaves structure beyond noise: '
                                              'column pattern 3.77 % (z 3395); it costs 3.99 %'}})
    assert old.reasons == ['column pattern 3.77 % (3395 times its noise)']
    assert '(z ' not in old.sentence and '(3395 times its noise)' in old.sentence


def test_warnings_written_before_read_in_todays_words(residual_run, tmp_path):
    copy = shutil.copytree(residual_run, tmp_path / 'run')
    with open(copy / 'warnings.txt', 'a') as out:
        out.write("movie_000006: residual gain flagged: column pattern 9.65 % (z 1962)\n")
    assert load(copy).warnings[-1] == ('movie_000006: residual gain flagged: column pattern '
                                       '9.65 % (1962 times its noise)')


def test_the_methods_text_says_the_frames_actually_used():
    from scipion_gain.report.methods import methods_sentences
    asked = {'method': 'sme', 'frames_per_movie': 20, 'frame_step': 1}
    demo = ' '.join(methods_sentences(asked, frames=10, movies=10))
    assert 'every frame of each movie (10 frames; 20 were asked for, more than the movies hold)' \
        in demo and 'at least 20' not in demo
    assert '20 frames of each movie, evenly spaced over it.' in ' '.join(
        methods_sentences(asked, frames=20))
    assert '30 frames of each movie, evenly spaced over it (at least 20 were asked for)' in \
        ' '.join(methods_sentences(asked, frames=30))
    assert 'at least 20 frames of each movie' in ' '.join(methods_sentences(asked))
    every = {'method': 'sme', 'frames_per_movie': 0, 'frame_step': 5}
    assert 'every 5th frame (8 frames per movie)' in ' '.join(methods_sentences(every, frames=8))


def test_a_map_caption_gives_the_dqe_loss_once_and_the_paper_thresholds_in_words():
    stats = {'statistics': {'mean': 1.0, 'std': 0.0277, 'p2.5': 0.955, 'p97.5': 1.059,
                            'max': 1.1177}, 'ratios': {'p97.5/p2.5': 1.1089, 'max/p97.5': 1.0554},
             'flags': {'std': False, 'percentile_ratio': False, 'max_ratio': False},
             'verdict': {'flagged': True, 'dqe_loss': 0.0399, 'reasons': ['column pattern 3.77 %'],
                         'sentence': 'the reference leaves structure beyond noise: column '
                                     'pattern 3.77 %; it costs 3.99 % of the DQE at 29.3 e/px: '
                                     'check or replace the gain reference'}}
    caption = figures.stats_caption(stats)
    assert "paper's flags: none" not in caption
    assert "under the paper's thresholds (they catch coarse errors only)" in caption
    assert caption.count('3.99 %') == 1 and '4.0 %' not in caption
    stats['statistics']['std'] = 0.05
    assert "over the paper's thresholds: std" in figures.stats_caption(stats)


# ------------------------------------------------------------------ figures
def test_every_report_figure_renders_and_is_not_blank(residual_run):
    rendered = report_figures(load(residual_run))
    names = [name for name, _, _, _ in rendered]
    for expected in ('timeline', 'histograms', 'accumulated_gain', 'gain_reference', 'defects',
                     'reference_defects', 'movie_000001_spectrum', 'movie_000005_spectrum',
                     'movie_000006_spectrum', 'movie_000001_gain', 'movie_000006_gain'):
        assert expected in names
    assert len([n for n in names if n.endswith('_gain') and n.startswith('movie_')]) == N_MOVIES
    for name, caption, fig, _ in rendered:
        assert isinstance(fig, Figure) and caption
        assert pixel_variance(fig) > 1e-3, f"{name} looks blank"


def test_residual_maps_share_one_symmetric_scale_and_a_flagged_one_shows_its_size(residual_run):
    data = load(residual_run)
    good, drifted = (figures.movie_gain_figure(data, i) for i in (1, 6))
    assert good.axes[0].images[0].get_clim() == pytest.approx((0.95, 1.05))
    assert good.axes[1].get_gid() == 'residual-scale'
    assert '1 \u00b1 5 %' in good.axes[1].get_ylabel()
    # the drifted residual spreads far wider than the fixed scale: on it, it would be solid
    # bars; it gets its own symmetric scale, round, that holds its 0.5-99.5 percentiles
    record = data.movie(6)
    values = record.load_gain()[~record.load_defects()]
    low, high = drifted.axes[0].images[0].get_clim()
    assert low + high == pytest.approx(2.0) and high > 1.05
    assert low <= np.percentile(values, 0.5) and np.percentile(values, 99.5) <= high
    assert high - 1 < 2 * max(1 - np.percentile(values, 0.5), np.percentile(values, 99.5) - 1)
    assert drifted.axes[1].get_gid() == 'own-scale'
    assert f"own scale 1 \u00b1 {100 * (high - 1):g} %" in drifted.axes[1].get_ylabel()
    narrow = figures.movie_gain_figure(data, 1, residual_range=0.03)
    assert narrow.axes[0].images[0].get_clim() == pytest.approx((0.97, 1.03))
    assert figures.residual_span(np.array([[0.9, 1.0, 1.2]]), clip=(0, 100)) == 0.2
    assert figures.residual_span(np.array([[0.77, 1.0, 1.1]]), clip=(0, 100)) == 0.3
    assert figures.residual_span(np.array([[0.97, 1.0, 1.03]]), clip=(0, 100)) == 0.03
    # the caption says each movie's own verdict: 'ok' for the good one, the drifted one's
    # column pattern
    assert "verdict: no structure beyond the estimate's noise" in good._supxlabel.get_text()
    assert 'verdict: the reference leaves structure beyond noise: column pattern' in \
        drifted._supxlabel.get_text().replace('\n', ' ')


def test_a_gain_keeps_a_labelled_percentile_stretch(gain_run):
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
    assert colour_axes.get_gid() == 'percentile-stretch'
    assert "stretched to this map's 0.5-99.5 percentiles" in colour_axes.get_ylabel()
    assert pixel_variance(fig) > 1e-3
    assert figures.movie_gain_figure(data, 1).axes[1].get_gid() == 'percentile-stretch'


def test_timeline_shows_the_verdict_by_movie_id_and_marks_only_values_over_thresholds(residual_run):
    data = load(residual_run)
    fig = figures.run_timeline_figure(data)
    strip, loss_ax, percentiles, std_ax, ratio_ax, max_ax = fig.axes[:6]
    loss = next(line for line in loss_ax.lines if line.get_gid() == 'dqe-loss')
    assert list(loss.get_xdata()) == list(range(1, N_MOVIES + 1))  # the verdicts' own numbers
    assert list(loss.get_ydata()) == pytest.approx(
        [100 * m.verdict.dqe_loss for m in data.movies])
    assert loss_ax.get_ylabel() == 'DQE loss (%)'
    crosses = [line for line in strip.lines if line.get_gid() == 'verdict-flagged']
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == DRIFTED
    thresholds = Thresholds()
    for ax, threshold in ((std_ax, thresholds.std), (ratio_ax, thresholds.percentile_ratio),
                          (max_ax, thresholds.max_ratio)):
        drawn = [line.get_ydata()[0] for line in ax.lines if line.get_gid() == 'threshold']
        assert drawn == [threshold]
        for marks in (line for line in ax.lines if line.get_gid() == 'over-threshold'):
            assert all(y > threshold for y in marks.get_ydata())
    assert not [line for line in max_ax.lines if line.get_gid() == 'over-threshold']
    std_curve = next(line for line in std_ax.lines if line.get_label() == 'std')
    assert list(std_curve.get_xdata()) == list(range(1, N_MOVIES + 1))
    assert np.all(np.asarray(std_curve.get_ydata())[:DRIFT_AT] < thresholds.std)
    for ax in fig.axes[:6]:
        bands = [p for p in ax.patches if p.get_gid() == 'verdict-band']
        assert len(bands) == 1  # one band: movies 5-6
        first = [line for line in ax.lines if line.get_gid() == 'first-flagged']
        assert len(first) == 1 and first[0].get_xdata()[0] == 4.5
    assert [a for a in fig.axes if a.get_gid() == 'acquisition-time']
    assert std_ax.get_xlabel() == '' and max_ax.get_xlabel() == 'movie id'
    assert '2 of 6 movies flagged; every movie from movie 5 on' in fig._suptitle.get_text()
    assert pixel_variance(fig) > 1e-3


def test_the_time_axis_names_every_movie_of_a_short_run_and_each_flagged_onset_of_a_long_one():
    ids = list(range(1, 11))
    assert figures.time_label_ids(ids, [1000.0 + 3 * i for i in ids]) == ids
    ids = list(range(1, 41))
    flagged = [i in (13,) or 23 <= i <= 30 for i in ids]
    chosen = figures.time_label_ids(ids, [1000.0 + 3 * i for i in ids], flagged)
    assert 13 in chosen and 23 in chosen and 1 in chosen and len(chosen) <= figures.TIME_LABELS
    assert all(abs(i - j) >= 40 / figures.TIME_LABELS for i in chosen for j in (13, 23) if i != j)
    fig = figures.timeline_figure([_stats() for _ in range(12)], ids=list(range(1, 13)),
                                  acquired=[1000.0 + 5 * i for i in range(12)])
    top = next(a for a in fig.axes if a.get_gid() == 'acquisition-time')
    assert list(top.get_xticks()) == list(range(1, 13))


def test_a_flagged_verdict_under_the_thresholds_gets_a_band_and_no_over_mark():
    stats = [_stats(verdict={'flagged': f, 'reasons': []}) for f in (False, False, True)]
    fig = figures.timeline_figure(stats, ids=[3, 4, 9])
    assert not [line for ax in fig.axes for line in ax.lines if line.get_gid() == 'over-threshold']
    bands = [p for p in fig.axes[2].patches if p.get_gid() == 'verdict-band']
    assert len(bands) == 1
    assert '1 of 3 movies flagged; every movie from movie 9 on' in fig._suptitle.get_text()


def test_timeline_without_flags_marks_nothing():
    fig = figures.timeline_figure([_stats() for _ in range(5)])
    assert not [line for ax in fig.axes for line in ax.lines
                if line.get_gid() in ('verdict-flagged', 'first-flagged', 'over-threshold')]
    assert not [p for ax in fig.axes for p in ax.patches if p.get_gid() == 'verdict-band']
    assert '0 of 5 movies flagged' in fig._suptitle.get_text()


def test_timeline_copes_with_an_infinite_ratio():
    stats = [{'statistics': {'std': 0.5, 'p2.5': 0.0, 'p97.5': 1.0, 'max': 3.0},
              'ratios': {'p97.5/p2.5': np.finfo(float).max, 'max/p97.5': 3.0}, 'flagged': True},
             {'statistics': {'std': 0.01, 'p2.5': 0.98, 'p97.5': 1.02, 'max': 1.1},
              'ratios': {'p97.5/p2.5': 1.04, 'max/p97.5': 1.08}, 'flagged': False}]
    fig = figures.timeline_figure(stats)
    assert pixel_variance(fig) > 1e-3


def test_histograms_name_every_movie_in_its_own_colour_and_cut_no_value(residual_run):
    data = load(residual_run)
    fig = figures.run_histogram_figure(data)
    ax = fig.axes[0]
    lines = {line.get_gid(): line for line in ax.lines if line.get_gid()}
    assert sorted(lines) == [f"histogram-{i}" for i in range(N_MOVIES)]
    colours = {tuple(np.round(line.get_color(), 3)) for line in lines.values()}
    assert len(colours) == N_MOVIES  # every curve can be told from the others
    assert lines['histogram-0'].get_linewidth() > lines['histogram-1'].get_linewidth()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"movie {i}" + (' (flagged)' if i in DRIFTED else '')
                      for i in range(1, N_MOVIES + 1)]
    assert ax.get_xlabel().startswith('residual gain value')
    low, high = ax.get_xlim()
    for record in data.movies:  # every good pixel of every map is inside the axis
        values = record.load_gain()[~record.load_defects()]
        assert low <= values.min() and values.max() <= high
    assert high == pytest.approx(max(m.load_gain()[~m.load_defects()].max() for m in data.movies))
    # After the drift the residual is wider: the last histogram is lower at its peak.
    assert np.nanmax(lines['histogram-5'].get_ydata()) < np.nanmax(lines['histogram-0'].get_ydata())
    note = next(t for t in fig.texts if t.get_gid() == 'histogram-note').get_text()
    assert note == 'Shown: movies 1-6 (every analysed movie).'
    assert pixel_variance(fig) > 1e-3


def test_histograms_say_which_movies_are_left_out_and_why(residual_run):
    data = load(residual_run)
    records = data.movies
    # three of six: the first, the last and the first flagged (movie 5) in place of movie 3
    assert [r.id for r in figures.select_movies(records, most=3)] == [1, 5, 6]
    assert [r.id for r in figures.select_movies(records, most=4)] == [1, 3, 5, 6]
    assert [r.id for r in figures.select_movies(records, ids=[2, 4])] == [2, 4]
    fig = figures.run_histogram_figure(data, most=3)
    note = next(t for t in fig.texts if t.get_gid() == 'histogram-note').get_text()
    assert note.replace('\n', ' ').startswith(
        'Shown: movies 1, 5-6 (3 movies spread over the run (the first, the last and the '
        'first flagged always), since more curves cannot be told apart). Left out: movies 2-4')
    chosen = figures.run_histogram_figure(data, ids=[2, 4])
    note = next(t for t in chosen.texts if t.get_gid() == 'histogram-note').get_text()
    assert note == 'Shown: movies 2, 4 (the movies asked for). Left out: movies 1, 3, 5-6.'


def test_defect_maps_count_what_the_json_counts(gain_run, residual_run):
    for root in (gain_run, residual_run):
        data = load(root)
        for record in data.movies:
            fig = figures.run_defect_figure(data, record.id)
            labels = record.load_defect_labels()
            assert figures.defect_counts(labels) == record.defect_counts()
            legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
            counts = record.defect_counts()
            for code, key in figures.COUNT_KEYS.items():
                if counts[key]:
                    assert any(text.startswith(f"{LABELS[code]}: {counts[key]}") for text in legend)
        _, labels = data.load_accumulated_labels()
        assert figures.defect_counts(labels) == data.accumulated_stats['defects']['counts']
    # the gain run's detector: a dead column, a broken row, dead and hot pixels
    counts = load(gain_run).movies[0].defect_counts()
    assert counts['dead_columns'] == 1 and counts['hot_pixels'] >= 3
    fig = figures.run_defect_figure(load(gain_run), 1)
    assert fig.axes[0].get_xlabel().startswith('x (pixel)')
    assert fig.axes[0].get_ylabel().startswith('y (pixel)')
    rings = {c.get_gid() for c in fig.axes[0].collections}
    assert f"defect-{HOT_PIXEL}" in rings  # single pixels are ringed, lines are not


def test_defect_figure_of_a_label_image():
    labels = np.zeros((64, 80), np.uint8)
    labels[:, 70] = DEAD_COLUMN
    labels[10, :] = BROKEN_ROW
    labels[40, 50] = HOT_PIXEL
    labels[5, 5] = DEAD_PIXEL
    assert figures.defect_counts(labels) == {'dead_pixels': 1, 'hot_pixels': 1, 'dead_rows': 0,
                                             'broken_rows': 1, 'dead_columns': 1,
                                             'broken_columns': 0, 'unusable_pixels': 0}
    fig = figures.defect_figure(labels)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ['dead pixel: 1', 'hot pixel: 1', 'broken row: 1 (80 px)',
                      'dead column: 1 (63 px)']  # the row was drawn over the column
    rings = {c.get_gid(): c for c in fig.axes[0].collections}
    assert rings[f"defect-{HOT_PIXEL}"].get_offsets().tolist() == [[50, 40]]
    assert pixel_variance(fig) > 1e-3


def test_the_power_spectrum_shows_the_drift_as_a_cross(residual_run):
    data = load(residual_run)
    good = figures.movie_spectrum_figure(data, 1)
    drifted = figures.movie_spectrum_figure(data, 6)
    assert good._cross.cross_strength < 1.5
    assert drifted._cross.horizontal > 3 * good._cross.horizontal  # a column pattern
    assert 'cross strength' in drifted.axes[0].get_title()
    # at page size the line is a pixel wide: arrows point at it, and the caption says so
    arrows = [t for t in drifted.axes[0].texts if t.get_gid() == 'cross-arm']
    assert len(arrows) == 2 and all(a.xy[1] == 0.0 for a in arrows)  # the horizontal arm
    assert not [t for t in good.axes[0].texts if t.get_gid() == 'cross-arm']
    caption = figures.spectrum_caption(drifted._cross, 'movie 6', 'flagged')
    assert 'horizontal line through the centre, between the red arrows' in caption
    assert f"holds {drifted._cross.horizontal:.0f} times the power beside it" in caption
    assert "the sum of movie 6's corrected frames (flagged)" in caption
    assert "the sum of movie 6's frames (no gain reference applied) (flagged)" in \
        figures.spectrum_caption(drifted._cross, 'movie 6', 'flagged', kind='gain')
    caption = figures.spectrum_caption(good._cross, 'movie 1', 'ok')
    assert 'No line through the centre' in caption and 'arrow' not in caption
    assert [r.id for r in figures.spectrum_movies(data)] == [1, 5, 6]
    assert pixel_variance(drifted) > 1e-3


def test_report_command_writes_a_small_page_with_header_conclusion_and_every_movie(
        residual_run, tmp_path, capsys):
    out = tmp_path / 'report'
    assert main(['report', str(residual_run), '-o', str(out), '--residual-range', '3%']) == 0
    printed = capsys.readouterr().out
    assert 'from movie 5 (file movie_004.mrc)' in printed
    assert printed.startswith(f"report of {N_MOVIES} movies, 2 flagged -> ")
    page = (out / 'index.html').read_text()
    assert f"<p>{N_MOVIES} movies analysed (" in page and '(movies 5-6).' in page
    assert '<h1>Gain check: ' in page and '000042_GainProtMovieGain' in page
    title = re.search(r'<h1>(.*?)</h1>', page).group(1)  # the project; the run is in the header
    assert '000042_GainProtMovieGain' not in title and title.startswith('Gain check: run')
    for header in ('<b>Project</b>', '<b>Protocol</b>', '<b>Session</b>', '<b>Report written</b>'):
        assert header in page
    # which reference was judged: the file the run used
    assert (f"<b>Gain reference</b></td><td><code>{load(residual_run).reference_path}</code> "
            f"(as the run used it") in page
    conclusion_text = re.search(r"<p class='conclusion bad' id='conclusion'>(.*?)</p>", page).group(1)
    assert conclusion_text.startswith('Reference consistent with movies 1-4; from movie 5')
    rows = re.findall(r"<tr( class=flagged)? id='movie-(\d+)'>", page)
    assert [int(i) for _, i in rows] == list(range(1, N_MOVIES + 1))
    assert [int(i) for flag, i in rows if flag] == DRIFTED
    assert 'class=over' in page
    thumbs = re.findall(r"id='thumb-(\d+)'><a href='([^']+)'", page)
    assert [int(i) for i, _ in thumbs] == list(range(1, N_MOVIES + 1))
    for _, link in thumbs:
        assert (out / link).exists()
    assert '1 \u00b1 3 %' in page  # the chosen residual scale is said on the page
    # an EPU file name (one word of 70 characters) wraps inside its 120-pixel thumbnail
    assert re.search(r"\.thumb \{[^}]*overflow-wrap: anywhere", page)
    data = load(residual_run)
    for record in data.movies:  # every reason written out in the table, none cut
        cell = re.search(rf"id='movie-{record.id}'>.*?<td class='text reasons' "
                         rf"title='([^']*)'>([^<]*)</td>", page).groups()
        assert cell == (record.verdict.reasons_text,) * 2
    assert re.search(r"<figure class='wide' id='histograms'>", page)  # the page's width
    histogram_caption = re.search(r"id='histograms'>.*?<figcaption>(.*?)</figcaption>",
                                  page).group(1)
    assert 'Shown: movies 1-6 (every analysed movie).' in histogram_caption
    assert re.search(r"The thin horizontal line through the centre, between the red arrows, "
                     r"holds \d+ times the power beside it", page)
    for figure_id in ('timeline', 'histograms', 'movie_000005_spectrum', 'accumulated_gain',
                      'defects'):
        assert f"id='{figure_id}'" in page
    sources = re.findall(r"src='([^']*)'", page)
    assert all(src.startswith('data:image/png;base64,') for src in sources)
    for src in sources:
        image = imread(io.BytesIO(base64.b64decode(src.split(',', 1)[1])), format='png')
        assert image[..., :3].var() > 1e-4
    from PIL import Image
    for png in out.glob('*.png'):  # palette PNGs: about a third of RGBA's size
        assert Image.open(png).mode == 'P', png.name
    assert 'References: Sorzano C.O.S. et al. (2018)' in page and '[Sorzano2018]' not in page
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
    assert (tmp_path / 'r' / 'movie_000001_gain.png').exists()  # loose files count from 1


def test_report_of_an_xmipp_style_summary(residual_run, tmp_path):
    """A folder with only summary.txt (what Xmipp's protocol writes) still gives the time line."""
    folder = tmp_path / 'xmipp'
    folder.mkdir()
    (folder / 'summary.txt').write_text((residual_run / 'summary.txt').read_text())
    data = load(folder)
    assert len(data.movies) == N_MOVIES and data.flagged_ids() == DRIFTED  # the paper's flags
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


def test_histograms_of_maps_loaded_one_at_a_time_are_those_of_the_maps(residual_run):
    # the run's figure loads each map when it draws it (two passes) instead of holding all
    data = load(residual_run)
    records = data.movies[:3]
    held = []

    def loader(record):
        def load_gain():
            held.append(record.id)
            return record.load_gain()
        return load_gain

    lazy = figures.histogram_figure([loader(r) for r in records], [r.id for r in records],
                                    [r.load_defects for r in records])
    eager = figures.histogram_figure([r.load_gain() for r in records], [r.id for r in records],
                                     [r.load_defects() for r in records])
    assert held == [r.id for r in records] * 2  # the range pass, then the curves
    for a, b in zip(lazy.axes[0].lines, eager.axes[0].lines):
        np.testing.assert_array_equal(a.get_ydata(), b.get_ydata())
    assert lazy.axes[0].get_xlim() == eager.axes[0].get_xlim()


def test_fast_histogram_counts_match_numpy():
    values = np.random.default_rng(3).normal(1, 0.05, 200_000).astype(np.float32)
    edges = np.linspace(0.9, 1.1, 121)
    expected, _ = np.histogram(values, bins=edges)
    counts = figures._uniform_histogram(values, 0.9, 1.1, 120)
    assert counts.sum() == expected.sum()
    assert np.abs(counts - expected).max() <= 2  # at most float rounding at bin edges


def test_the_methods_text_names_every_estimation_method_in_words():
    # the robust estimate (the default) was written "... from the movies themselves with robust."
    from scipion_gain.estimator.estimate import METHODS
    from scipion_gain.report.methods import methods_sentences
    for method in METHODS:
        first = methods_sentences({'method': method})[0]
        assert not first.endswith(f" with {method}."), first
    robust = methods_sentences({'method': 'robust'})[0]
    assert robust.endswith("after its specimen (carbon, gold, holes, ice) was divided out, "
                           "with each pixel's own gain estimated from its counts (counting frames).")


def test_a_check_folders_report_names_the_command_not_a_protocol(residual_run, tmp_path):
    # a scipion-gain check folder (extra/check.json) was headed 'Protocol: <folder name>'
    folder = tmp_path / 'check_session'
    shutil.copytree(residual_run, folder)
    (folder / 'extra' / 'check.json').write_text('{"format": 1}')
    out = tmp_path / 'report'
    assert main(['report', str(folder), '-o', str(out), '--movie-images', '1']) == 0
    page = (out / 'index.html').read_text()
    assert '<tr><td><b>Made by</b></td><td>scipion-gain check</td></tr>' in page
    assert '<b>Protocol</b>' not in page


def test_timeline_legends_leave_the_movies_points_visible():
    # two flagged movies at 0.85 % DQE loss: the DQE panel's legend (upper left) hid movie 1
    verdict = {'flagged': True, 'reasons': ['column pattern 2.93 % (69 times its noise)'],
               'dqe_loss': 0.0085, 'max_dqe_loss': 0.001, 'sentence': 'flagged'}
    fig = figures.timeline_figure([_stats(verdict=verdict), _stats(verdict=dict(
        verdict, dqe_loss=0.0086))], ids=[1, 2])
    fig.canvas.draw()
    for ax in fig.axes[1:]:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent()
        for line in ax.get_lines():
            if line.get_gid() in ('threshold', 'dqe-threshold'):
                continue   # a threshold spans the panel; the legend may cross it
            for point in ax.transData.transform(np.column_stack(line.get_data())):
                assert not box.contains(*point), (ax.get_ylabel(), line.get_label())


def test_report_command_shows_its_progress_unless_quiet(residual_run, tmp_path, capsys):
    # a 4096 x 4096 run's figures take tens of seconds: the command said nothing meanwhile
    assert main(['report', str(residual_run), '-o', str(tmp_path / 'a')]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err and all(line.startswith('report: figure ') for line in err), err
    assert re.match(r'report: figure (\d+)/\1 \(100 %\), ', err[-1]), err[-1]
    assert main(['report', str(residual_run), '-o', str(tmp_path / 'b'), '-q']) == 0
    assert capsys.readouterr().err == ''
