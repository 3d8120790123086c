"""`scipion-gain check` and the Scipion protocol judge the same movies alike.

A session of six raw movies whose detector drifts from movie 5 on (a 3 %
column pattern appears) against the reference of the first detector: the
protocol in a Scipion project and the command on the same files give the same
per-movie verdicts, the same statistics and the same session verdict; the
command exits 1.
"""
import json
import os

import numpy as np
import pytest

from scipion_gain.commands import main
from scipion_gain.io import write_mrc
from scipion_gain.simulate import simulate_gain

from test_protocol import (GAIN_OPTIONS, SHAPE, import_movies, project,  # noqa: F401
                           run_gain, stats_of, write_movie_file)

MOVIES = 6
DRIFT_FROM = 5


@pytest.fixture(scope='module')
def drifting_session(tmp_path_factory):
    folder = tmp_path_factory.mktemp('drift')
    detector = simulate_gain(SHAPE, rng=1, **GAIN_OPTIONS)
    columns = np.exp(np.random.default_rng(7).normal(0, 0.03, SHAPE[1]))[None, :]
    movies = folder / 'movies'
    movies.mkdir()
    for index in range(MOVIES):
        gain = detector.gain * (columns if index + 1 >= DRIFT_FROM else 1.0)
        path = movies / ('movie_%03d.mrc' % index)
        write_movie_file(path, gain, 300 + index, specimen=False)
        os.utime(path, (1.7e9 + index, 1.7e9 + index))   # acquisition order
    write_mrc(str(folder / 'gain.mrc'), detector.correction)
    return folder


@pytest.mark.slow
def test_check_gives_the_protocols_verdicts(project, drifting_session, tmp_path, capsys):  # noqa: F811
    folder = drifting_session
    imported = import_movies(project, folder / 'movies', gain=folder / 'gain.mrc')
    prot = run_gain(project, imported)
    assert prot.isFinished(), prot.getErrorMessage()
    protocol = [stats_of(prot, movie_id) for movie_id in range(1, MOVIES + 1)]
    protocol_session = json.loads(open(prot._getExtraPath('accumulated_stats.json')).read())

    out = tmp_path / 'check'
    status = main(['check', str(folder / 'movies' / 'movie_*.mrc'), '--gain',
                   str(folder / 'gain.mrc'), '-o', str(out), '-q'])
    capsys.readouterr()
    result = json.loads((out / 'session.json').read_text())
    assert [m['file'] for m in result['movies']] == \
        [str(folder / 'movies' / ('movie_%03d.mrc' % i)) for i in range(MOVIES)]
    flags = [m['verdict']['flagged'] for m in result['movies']]
    assert flags == [stats['verdict']['flagged'] for stats in protocol]
    assert flags == [i + 1 >= DRIFT_FROM for i in range(MOVIES)]
    for movie, stats in zip(result['movies'], protocol):
        assert movie['verdict']['reasons'] == stats['verdict']['reasons']
        for key, value in stats['statistics'].items():
            assert movie['statistics'][key] == pytest.approx(value, rel=1e-6, abs=1e-9)
    assert result['session']['verdict']['flagged'] == protocol_session['verdict']['flagged']
    assert result['session']['verdict']['reasons'] == protocol_session['verdict']['reasons']
    assert result['session']['movies'] == protocol_session['movies']
    assert status == 1
