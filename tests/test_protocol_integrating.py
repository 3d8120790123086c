"""GainProtMovieGain with integrating-camera movies in a real Scipion project.

The real DE Celeritas movie taken without beam is imported beside a simulated
raw movie of the same 64 x 64 camera (its real dark reference added, 300 ADU
per electron). With the movies' dark reference the no-beam movie is reported
as not analysable and kept out of every output and of the running estimate,
and the other is analysed with the dark subtracted; without the dark, the
other movie's offset is a warning.
"""
import json
import os
import shutil

import numpy as np
import pytest

from helpers import SHARED_DATA
from scipion_gain.io import read_dark_reference
from scipion_gain.simulate import simulate_movie
from test_protocol import (ids, import_movies, project, run_file, run_gain,  # noqa: F401
                           stats_of)

CELERITAS = SHARED_DATA / 'de-celeritas'
NOBEAM = CELERITAS / 'celeritas_64x64_nobeam_movie.mrcs'
DARK = CELERITAS / 'celeritas_64x64_dark_deheader.mrc'
pytestmark = pytest.mark.skipif(not CELERITAS.is_dir(), reason='../shared/data is not there')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """movie_000.mrc: the real no-beam movie; movie_001.mrc: a raw movie with electrons."""
    folder = tmp_path_factory.mktemp('celeritas')
    shutil.copyfile(NOBEAM, folder / 'movie_000.mrc')
    dark = read_dark_reference(DARK).dark
    simulate_movie(str(folder / '.tmp.mrc'), dark.shape, 60, np.ones(dark.shape, np.float32),
                   mode='integrating', adu_per_electron=300.0, electron_spread=0.7,
                   read_noise=2.3, dose=1.0, rng=4, output='rounded', dark=dark)
    os.replace(folder / '.tmp.mrc', folder / 'movie_001.mrc')
    return folder


def test_with_the_dark_the_no_beam_movie_is_not_analysable_and_kept_out(project, folder):
    imported = import_movies(project, folder, darkFile=str(DARK))
    assert imported.outputMovies.getDark()
    prot = run_gain(project, imported, framesPerMovie=0)  # every frame: the first 32 surveyed
    assert prot.isFinished(), prot.getErrorMessage()
    assert ids(prot.estimatedGains) == [2]
    assert ids(prot.outputMovies) == [2]
    failed = run_file(prot, 'extra/failed/movie_000001.txt').read_text()
    assert failed.startswith('%s: no electron signal in the first 32 frames'
                             % os.path.realpath(folder / 'movie_000.mrc'))
    warnings = run_file(prot, 'warnings.txt').read_text()
    assert 'movie_000001: could not be analysed: ' in warnings
    assert 'taken without beam (blanked, valves closed)? not analysable' in warnings
    assert 'offset' not in warnings
    assert [line.split(':')[0] for line in
            run_file(prot, 'summaryForMonitor.txt').read_text().splitlines()] == [
        'movie_000002_gain']
    with np.load(prot._getExtraPath('accumulated_sums.npz')) as sums:
        assert [int(m) for m in sums['members']] == [2]
    report = stats_of(prot, 2)
    assert os.path.samefile(report['dark_reference'], DARK)
    assert report['input']['dark']['path'] == report['dark_reference']
    assert report['input']['offset']['detected'] is False
    conversion = report['input']['conversion']
    assert conversion['adu_per_electron'] == pytest.approx(300, rel=0.05)
    assert report['dose']['source'] == 'photon transfer'
    summary = prot.summary()
    assert any(line.startswith('Dark reference: ') and str(DARK) in line for line in summary)
    assert any(line.startswith('Camera (photon transfer, movie 2): %.4g ADU per electron'
                               % conversion['adu_per_electron']) for line in summary)
    assert any('1 movies could not be read' in line for line in summary)


def test_without_the_dark_the_offset_is_a_warning(project, folder):
    imported = import_movies(project, folder)
    prot = run_gain(project, imported, framesPerMovie=0)
    assert prot.isFinished(), prot.getErrorMessage()
    assert ids(prot.estimatedGains) == [2]
    offset = stats_of(prot, 2)['input']['offset']
    assert offset['detected'] is True and offset['relative_to'] == 'raw frames'
    warnings = run_file(prot, 'warnings.txt').read_text().splitlines()
    expected = ('movie_000002: frames carry an offset of about %.0f ADU: give the dark reference'
                % offset['offset_adu'])
    assert expected in warnings
    assert 320 < offset['offset_adu'] < 345  # the camera's dark level, 332 ADU
    assert any(line.startswith('1 movies carry an offset') for line in prot.summary())
    assert json.loads(json.dumps(offset)) == offset
