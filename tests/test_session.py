"""What only a session shows (estimator/session.py): smooth fields and single pixels.

Twelve movies of different specimens (256 x 256, 10 frames, 4 e/px/frame) through
one detector, judged with references that are exact, off by a smooth field,
or off pixel by pixel. One movie cannot tell either error from the specimen;
the accumulated estimate (analysis.analyse_accumulated) can.
"""
import numpy as np
import pytest

from scipion_gain.estimator import GainAccumulator
from scipion_gain.estimator.analysis import analyse, analyse_accumulated
from scipion_gain.simulate import Specimen, simulate_gain, simulate_movie, smooth_field
from scipion_gain.io.results import write_sums

from helpers import r_squared

SHAPE = (256, 256)
MOVIES = 12


@pytest.fixture(scope='module')
def session(tmp_path_factory):
    folder = tmp_path_factory.mktemp('session')
    gain = simulate_gain(SHAPE, rng=5, sector_spread=0.05, column_spread=0.02)
    rng = np.random.default_rng(8)
    movies = []
    for k in range(MOVIES):
        specimen = Specimen(ice=0.05, ice_angle=float(rng.uniform(0, 360)), particle_density=0.2,
                            carbon=0.25 if k % 2 else 0.0,
                            carbon_angle=float(rng.uniform(0, 360)))
        movies.append(str(simulate_movie(str(folder / f'm{k}.mrc'), SHAPE, 10, gain.gain,
                                         dose=4.0, rng=100 + k, specimen=specimen)))
    return gain, movies


def references(gain):
    truth = gain.correction.astype(np.float64)
    smooth = np.exp(0.04 * smooth_field(SHAPE, 0.3 * SHAPE[0], 1))       # 4 % RMS, smooth
    pixels = np.exp(0.05 * np.random.default_rng(2).standard_normal(SHAPE))  # 5 % per pixel
    out = {'exact': truth, 'smooth': truth / smooth, 'pixels': truth / pixels}
    return {name: (ref / ref.mean()).astype(np.float32) for name, ref in out.items()}


def judged(session, name):
    gain, movies = session
    reference = references(gain)[name]
    accumulator = GainAccumulator()
    verdicts = []
    for index, movie in enumerate(movies):
        analysis = analyse([movie], reference=reference)
        verdicts.append(analysis.verdict['flagged'])
        accumulator.add(analysis.result, member=index + 1)
    return verdicts, analyse_accumulated(accumulator, reference), reference


def components(analysis):
    return {c['name']: c for c in analysis.report['assessment']['components']}


def test_an_exact_reference_shows_nothing_in_the_session(session):
    verdicts, accumulated, _ = judged(session, 'exact')
    assert not any(verdicts)
    found = {name for name, c in components(accumulated).items() if c['found']}
    assert found == set() and not accumulated.verdict['flagged']


def test_a_smooth_error_is_found_and_mapped_by_the_session_not_judged(session):
    gain, _ = session
    verdicts, accumulated, reference = judged(session, 'smooth')
    assert not any(verdicts)          # one movie: a smooth field is the ice's business
    smooth = components(accumulated)['smooth']
    assert smooth['found'] and smooth['movies'] == MOVIES
    # reported and in the map, but not in the verdict (the illumination shares it)
    assert not accumulated.verdict['flagged']
    true_residual = gain.correction / reference
    assert r_squared(np.log(accumulated.structure), np.log(true_residual)) > 0.6


def test_a_pixel_error_is_found_by_the_session(session):
    gain, _ = session
    _, accumulated, reference = judged(session, 'pixels')
    pixels = components(accumulated)['pixels']
    assert pixels['found'] and pixels['size'] == pytest.approx(0.05, rel=0.3)
    true_residual = gain.correction / reference
    # 480 e/px in all (240 per half): a pixel is known to about 5 %, as large as its error;
    # the loss is what it costs each movie (40 e/px)
    assert r_squared(np.log(accumulated.structure), np.log(true_residual)) > 0.4
    electrons = accumulated.verdict['electrons_per_pixel']   # one movie's dose
    assert electrons == pytest.approx(40, rel=0.05)
    truth = electrons * 0.05 ** 2 / (1 + electrons * 0.05 ** 2)
    assert accumulated.verdict['dqe_loss'] == pytest.approx(truth, rel=0.2)


def test_session_sums_survive_save_and_load(session, tmp_path):
    gain, movies = session
    accumulator = GainAccumulator()
    for movie in movies[:3]:
        accumulator.add(analyse([movie], reference=gain.correction).result)
    write_sums(tmp_path / 'sums.npz', accumulator)
    back = GainAccumulator.load(tmp_path / 'sums.npz')
    assert len(back.tiles) == 3
    np.testing.assert_array_equal(back.alternate_sum, accumulator.alternate_sum)
    np.testing.assert_array_equal(np.stack(back.tiles), np.stack(accumulator.tiles))


# --- steps: the session's two halves must see them alike ----------------------------------------

STEP_MOVIES = 6
STEP_ROW = 64   # out of the edge's reach: a rejected edge's lines (a filter width) are left out


@pytest.fixture(scope='module')
def edge_session(tmp_path_factory):
    """Six movies; the fourth has a carbon edge 2 degrees off the rows, near row 177 (its
    own verdict leaves it out; in the session's sum the others dilute it below every band's
    notice, so that only the halves of the session tell it from the detector)."""
    folder = tmp_path_factory.mktemp('edge_session')
    gain = simulate_gain(SHAPE, rng=6, sector_spread=0.05, column_spread=0.02)
    movies = []
    for k in range(STEP_MOVIES):
        specimen = Specimen(ice=0.03, particle_density=0.1,
                            carbon=0.3 if k == 3 else 0.0, carbon_angle=92.0,
                            carbon_transmission=0.6)
        movies.append(str(simulate_movie(str(folder / f'm{k}.mrc'), SHAPE, 10, gain.gain,
                                         dose=4.0, rng=300 + k, specimen=specimen)))
    return gain, movies


def _session_of(session, reference):
    accumulator = GainAccumulator()
    for index, movie in enumerate(session[1]):
        accumulator.add(analyse([movie], reference=reference).result, member=index + 1)
    return analyse_accumulated(accumulator, reference)


def test_one_movies_carbon_edge_is_not_a_step_of_the_session(edge_session):
    gain, movies = edge_session
    truth = gain.correction.astype(np.float64)
    exact = (truth / truth.mean()).astype(np.float32)
    assert not analyse([movies[3]], reference=exact).verdict['flagged']
    accumulated = _session_of(edge_session, exact)
    row_steps = components(accumulated)['row_steps']
    assert not row_steps['found'] and not accumulated.verdict['flagged']
    edges = [e for e in row_steps['specimen_edges'] if e.get('halves_disagreement_z', 0) > 5]
    assert edges, row_steps['specimen_edges']   # left out because one half only has it


def test_a_readout_step_is_still_found_in_that_session(edge_session):
    gain, _ = edge_session
    truth = gain.correction.astype(np.float64)
    wrong = truth.copy()
    wrong[STEP_ROW:, :] *= 1.03          # a 3 % step between two blocks of rows
    accumulated = _session_of(edge_session, (wrong / wrong.mean()).astype(np.float32))
    row_steps = components(accumulated)['row_steps']
    assert row_steps['found'] and accumulated.verdict['flagged']
    assert [abs(s['position'] - STEP_ROW) <= 1 for s in row_steps['steps']] == [True]
    assert abs(row_steps['steps'][0]['halves_disagreement_z']) < 5


def test_a_step_in_half_the_frame_away_from_any_boundary_is_found_by_the_session(edge_session):
    # rows 64 on, columns 0-127 only, 8 % (no readout boundary there: one movie looks for
    # steps in part of the frame only at the reference's boundaries; a session, whose two
    # halves must see a step alike, everywhere; at 256 x 256 the specimen leaves a run of
    # bands a noise of about 1 % on its detrended step)
    gain, _ = edge_session
    truth = gain.correction.astype(np.float64)
    wrong = truth.copy()
    wrong[STEP_ROW:, :128] *= 1.08
    accumulated = _session_of(edge_session, (wrong / wrong.mean()).astype(np.float32))
    row_steps = components(accumulated)['row_steps']
    assert row_steps['found'] and accumulated.verdict['flagged']
    step = max(row_steps['steps'], key=lambda s: abs(s['height']))
    assert abs(step['position'] - STEP_ROW) <= 1 and 0.05 < abs(step['height']) < 0.11
    assert row_steps['where'].startswith(f"row {step['position']}, columns 0-")
    first, last = (int(v) for v in row_steps['where'].split('columns ')[1].split('-'))
    assert first == 0 and 100 <= last <= 160, row_steps['where']
