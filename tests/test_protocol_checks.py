"""GainProtMovieGain's checks beside the paper's flags, in a real Scipion project.

* orientation of the movies' gain reference: a reference given rotated
  by 90 degrees, or inverted (1/x), is oriented into a new file that is used,
  attached and output (a right reference left alone: test_protocol.py);
* defects: label image and MotionCor2 -DefectFile per movie;
* the noise-aware assessment: item attributes, summary column,
  warnings and the structure model (a right reference not flagged: test_protocol.py).

Same simulated movies and helpers as test_protocol.py (256 x 256, 12 frames).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from scipion_gain.io import write_mrc
from scipion_gain.report.run_folder import load as load_run_folder
from scipion_gain.simulate import correction_of, simulate_gain

from helpers import r_squared
from test_protocol import (GAIN_OPTIONS, SHAPE, detector, ids, import_movies,  # noqa: F401
                           make_movies, movies, parse_monitor_line, project, read_map, run_file,
                           run_gain, run_log, sha1, stats_of)


def _gain_run(project, movies, tmp_path_factory, name, reference, **params):  # noqa: F811
    gain_file = tmp_path_factory.mktemp(name) / ('%s.mrc' % name)
    write_mrc(str(gain_file), reference)
    before = sha1(gain_file)
    imported = import_movies(project, movies, gain=gain_file)
    prot = run_gain(project, imported, **params)
    assert prot.isFinished(), prot.getErrorMessage()
    return prot, gain_file, before


def _orientation(prot):
    return json.loads(Path(prot._getExtraPath('orientation.json')).read_text())


# ------------------------------------------------------------------ orientation
@pytest.fixture(scope='module')
def textured():
    # test_protocol's detector with 3 % per-pixel scatter, as real gains have: the
    # pixel texture is what tells a flip from the original (a gain made of column and
    # row factors alone is nearly unchanged by an upside-down flip; measured on these
    # 3 movies: significance 4.4 without scatter, "no confident match"; 11 with it)
    return simulate_gain(SHAPE, rng=1, pixel_scatter=0.03, **GAIN_OPTIONS)


@pytest.fixture(scope='module')
def textured_movies(tmp_path_factory, textured):
    return make_movies(tmp_path_factory.mktemp('textured'), 4, textured.gain, seed=600,
                       specimen=False)


@pytest.fixture(scope='module')
def rotated_run(project, textured_movies, textured, tmp_path_factory):  # noqa: F811
    # the right reference, stored rotated by 90 degrees (numpy's rot90, k=1); movieStep 3:
    # movies 1 and 4 analysed, the orientation from the first 3 all the same
    return _gain_run(project, textured_movies, tmp_path_factory, 'rotated',
                     np.ascontiguousarray(np.rot90(textured.correction)), movieStep=3)


@pytest.fixture(scope='module')
def inverted_run(project, textured_movies, textured, tmp_path_factory):  # noqa: F811
    # the detector's response (1/x of the correction) given where a correction is expected
    return _gain_run(project, textured_movies, tmp_path_factory, 'inverted',
                     correction_of(1.0 / np.maximum(textured.gain, 1e-3)), movieStep=3)


def test_a_rotated_reference_is_oriented_used_and_attached(rotated_run, textured):
    prot, gain_file, before = rotated_run
    decision = _orientation(prot)
    transform = decision['orientation']['transform']
    assert decision['orientation']['confident'] is True
    assert (transform['rotation'], transform['flip']) == (1, 0)
    assert decision['orientation']['inverted'] is False
    oriented = Path(prot._getExtraPath('oriented_gain.mrc'))
    assert decision['oriented'] == str(oriented.resolve())
    expected = textured.correction / textured.correction.mean()
    assert np.allclose(read_map(oriented), expected, atol=1e-4)  # mean 1, movies' orientation
    # used for the residuals (all movies: the set was complete when the first one started)
    for item in prot.residualGains:
        assert item._gainFlagged.get() is False and item._structureFlagged.get() is False
        assert stats_of(prot, item.getObjId())['gain_reference'] == 'oriented'
    # attached, output, recorded, logged in MotionCor2 and RELION terms
    assert Path(prot.outputMovies.getGain()).resolve() == oriented.resolve()
    assert prot.orientedGain.getSize() == 1
    image = prot.orientedGain.getFirstItem()
    assert Path(image.getFileName()).resolve() == oriented.resolve()
    assert image._gainRotGain.get() == 1 and image._gainFlipGain.get() == 0
    assert image._gainInverted.get() is False
    info = json.loads(Path(prot._getExtraPath('gain_reference.json')).read_text())
    assert info['oriented'] == decision['oriented']
    assert info['orientation']['transform']['motioncor2'] == '-RotGain 1 -FlipGain 0'
    log = run_log(prot)
    assert '-RotGain 1 -FlipGain 0' in log and '--gain_rot 1 --gain_flip 0' in log
    assert sha1(gain_file) == before  # the user's file is never written
    accumulated = json.loads(Path(prot._getExtraPath('accumulated_stats.json')).read_text())
    assert accumulated['gain_reference'] == 'oriented'
    assert accumulated['movies'] == [1, 4]
    assert not run_file(prot, 'warnings.txt').exists()
    # the report and the viewer show the reference as used
    assert load_run_folder(prot._getPath()).reference_path.name == 'oriented_gain.mrc'


def test_an_inverted_reference_is_taken_1_over_x(inverted_run, textured):
    prot, gain_file, before = inverted_run
    decision = _orientation(prot)
    assert decision['orientation']['confident'] is True
    assert decision['orientation']['inverted'] is True
    assert decision['orientation']['transform']['rotation'] == 0
    assert decision['orientation']['transform']['flip'] == 0
    oriented = read_map(prot._getExtraPath('oriented_gain.mrc'))
    assert np.allclose(oriented, textured.correction / textured.correction.mean(), atol=1e-4)
    assert ids(prot.residualGains) == [1, 4]
    for item in prot.residualGains:
        assert item._gainFlagged.get() is False and item._structureFlagged.get() is False
    assert prot.orientedGain.getFirstItem()._gainInverted.get() is True
    assert Path(prot.outputMovies.getGain()).name == 'oriented_gain.mrc'
    assert 'inverted (1/x)' in run_log(prot)
    assert sha1(gain_file) == before


@pytest.fixture(scope='module')
def column_pattern():
    return 1 + 0.03 * np.random.default_rng(42).standard_normal(SHAPE[1])


@pytest.fixture(scope='module')
def column_run(project, movies, detector, column_pattern, tmp_path_factory):  # noqa: F811
    # the right reference times a 3 % column pattern: the residual is its inverse
    reference = detector.correction * column_pattern[None, :]
    return _gain_run(project, movies, tmp_path_factory, 'columns', reference / reference.mean(),
                     movieStep=3)


def test_a_3_percent_column_pattern_is_structure_flagged_with_a_warning(column_run,
                                                                        column_pattern):
    prot = column_run[0]
    assert ids(prot.residualGains) == [1, 4]
    for item in prot.residualGains:
        assert item._gainFlagged.get() is False  # the paper's flags miss it at these sizes
        assert item._structureFlagged.get() is True
        # one SME pass corrects a column pattern about halfway (README): ~1.5 % of 3 %
        assert 0.01 < item._structureColumns.get() < 0.05
        report = stats_of(prot, item.getObjId())
        found = [c['name'] for c in report['assessment']['components'] if c['found']]
        assert 'columns' in found
        # the structure model follows the residual column pattern (1 / pattern)
        model = read_map(prot._getExtraPath('movie_%06d_structure.mrc' % item.getObjId()))
        assert model.mean() == pytest.approx(1, abs=1e-3)
        assert r_squared(model.mean(axis=0), 1 / column_pattern) > 0.8
    warnings = run_file(prot, 'warnings.txt').read_text().splitlines()
    assert ['movie_000001', 'movie_000004'] == [line.split(':')[0] for line in warnings]
    assert all('residual gain flagged (file movie_' in line and 'column pattern' in line
               for line in warnings)
    assert run_log(prot).count('residual gain flagged (file movie_') >= 2
    summary = run_file(prot, 'summary.txt').read_text().splitlines()
    assert all(' verdict=flagged[' in line and 'column_pattern' in line for line in summary)
    # the monitor's file keeps exactly Xmipp's five fields, and its alarm stays off
    for line in run_file(prot, 'summaryForMonitor.txt').read_text().splitlines():
        assert len(line.split()) == 5
        _, stddev, ratio1, ratio2 = parse_monitor_line(line)
        assert not (stddev > 0.04 or ratio1 > 1.15 or ratio2 > 4.5)
    accumulated = json.loads(Path(prot._getExtraPath('accumulated_stats.json')).read_text())
    assert accumulated['assessment']['flagged'] is True
    assert Path(prot._getExtraPath('accumulated_structure.mrc')).exists()


# ------------------------------------------------------------------ defects
@pytest.fixture(scope='module')
def defective_run(project, tmp_path_factory):  # noqa: F811
    truth = simulate_gain(SHAPE, rng=5, dead_column=True, hot_pixels=20, dead_pixels=10)
    folder = make_movies(tmp_path_factory.mktemp('defective'), 2, truth.gain, seed=400)
    prot, _, _ = _gain_run(project, folder, tmp_path_factory, 'defective_gain',
                           correction_of(truth.gain))
    return prot, truth


def test_defects_are_written_as_labels_and_a_motioncor2_defect_file(defective_run):
    prot, truth = defective_run
    dead_column = int(np.nonzero(truth.dead.all(axis=0))[0][0])
    for movie_id in (1, 2):
        lines = Path(prot._getExtraPath('defects_%06d.txt' % movie_id)).read_text().splitlines()
        rectangles = [tuple(map(int, line.split())) for line in lines]
        assert lines and all(len(line.split()) == 4 for line in lines)
        covered = np.zeros(SHAPE, bool)
        for x, y, w, h in rectangles:
            assert w >= 1 and h >= 1 and x + w <= SHAPE[1] and y + h <= SHAPE[0]
            covered[y:y + h, x:x + w] = True
        assert covered[:, dead_column].all()
        assert covered[truth.hot].all()
        labels = read_map(prot._getExtraPath('defects_%06d.mrc' % movie_id))
        assert (labels[:, dead_column] > 0).all()
        counts = stats_of(prot, movie_id)['defects']['counts']
        assert counts['dead_columns'] == 1 and counts['hot_pixels'] == int(truth.hot.sum())
    for item in prot.residualGains:
        assert item._defectColumns.get() == 1
        assert item._defectHotPixels.get() == int(truth.hot.sum())
        assert item._defectPixels.get() >= SHAPE[0] + int(truth.hot.sum())
    # the report reads the defect maps of the movies and of the running estimate
    data = load_run_folder(prot._getPath())
    mask = data.movies[0].load_defects()
    assert mask[:, dead_column].all() and mask[truth.hot].all()
    assert data.load_accumulated()[1][:, dead_column].all()
    assert Path(prot._getExtraPath('accumulated_defects.txt')).read_text().strip()
