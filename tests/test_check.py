"""`scipion-gain check`: a folder of movies judged as the protocol judges it, outside Scipion.

Small simulated sessions (256 x 256, 8 frames): the exit status on an exact
and on wrong references, one line and status 2 on bad input, session.json's
format, the run folder that ``scipion-gain report`` reads, a resume that
analyses only new movies, inputs left byte-identical, a bad movie that fails
alone, and ``--follow`` over movies written while it runs.
"""
import hashlib
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from scipion_gain.commands import main
from scipion_gain.io import write_mrc
from scipion_gain.report.run_folder import load
from scipion_gain.simulate import simulate_gain, simulate_movie, wrong_reference

SHAPE = (256, 256)
FRAMES = 8
FAST = ['--frames-per-movie', '0', '--report-interval', '0', '-q']


@pytest.fixture(scope='module')
def session(tmp_path_factory):
    """Three movies of one detector, its exact reference, a reference with a 2 % column
    error and one rotated by 180 degrees."""
    folder = tmp_path_factory.mktemp('check')
    detector = simulate_gain(SHAPE, rng=3)
    (folder / 'raw').mkdir()
    for index in range(3):
        simulate_movie(str(folder / 'raw' / f'movie_{index:03d}.mrc'), SHAPE, FRAMES,
                       detector.gain, dose=2.0, rng=100 + index)
    write_mrc(str(folder / 'exact.mrc'), detector.correction)
    write_mrc(str(folder / 'columns.mrc'),
              wrong_reference(detector.correction, 'columns', rng=1, size=0.02).reference)
    write_mrc(str(folder / 'rot180.mrc'),
              wrong_reference(detector.correction, 'rot180').reference)
    return folder, detector


def fingerprints(folder):
    return {path: hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob('*')) if path.is_file()}


def test_exact_reference_exit_0_session_json_and_resume(session, tmp_path, capsys):
    """Two movies and the exact reference: nothing flagged (0); session.json names each
    movie with its id, file, time, verdict and the paper's statistics; the run folder
    reads as the protocol's. A second call with a third movie and a bad one analyses
    only those two, keeps the ids, and the bad one fails alone."""
    folder, detector = session
    raw = tmp_path / 'raw'
    raw.mkdir()
    for name in ('movie_000.mrc', 'movie_001.mrc'):
        shutil.copy(folder / 'raw' / name, raw / name)
        os.utime(raw / name, (1.7e9, 1.7e9 + int(name[6:9])))
    before = fingerprints(folder) | fingerprints(raw)
    out = tmp_path / 'out'
    status = main(['check', str(raw / '*.mrc'), '--gain', str(folder / 'exact.mrc'),
                   '-o', str(out)] + FAST)
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert printed.out.strip().splitlines()[-1].startswith('2 movies checked (2 new); '
                                                           'no movie flagged')
    result = json.loads((out / 'session.json').read_text())
    assert result['format'] == 1 and result['flagged'] is False
    assert [(m['id'], os.path.basename(m['file'])) for m in result['movies']] == \
        [(1, 'movie_000.mrc'), (2, 'movie_001.mrc')]
    for movie in result['movies']:
        assert movie['state'] == 'ok' and movie['time'].startswith('2023-11-1')
        assert set(movie['verdict']) == {'flagged', 'reasons', 'dqe_loss', 'sentence'}
        assert set(movie['statistics']) >= {'std', 'p2.5', 'p97.5', 'max'}
        assert set(movie['paper_flags']) == {'std', 'percentile_ratio', 'max_ratio'}
    assert result['session']['movies'] == [1, 2]
    assert result['session']['verdict']['flagged'] is False
    data = load(str(out))
    assert data.ids() == [1, 2] and data.accumulated_stats is not None
    assert (out / 'index.html').exists()
    assert len((out / 'summaryForMonitor.txt').read_text().splitlines()) == 2
    first_stats = (out / 'extra' / 'movie_000001_stats.json').stat().st_mtime_ns

    shutil.copy(folder / 'raw' / 'movie_002.mrc', raw / 'movie_002.mrc')
    (raw / 'movie_broken.mrc').write_bytes(b'not a movie' * 100)
    status = main(['check', str(raw / '*.mrc'), '--gain', str(folder / 'exact.mrc'),
                   '-o', str(out)] + FAST[:-1])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert 'resuming' in printed.err and '2 movies done before are kept; 2 new movies' \
        in printed.err
    assert printed.err.count('movie 3 (movie_002.mrc)') == 1
    assert 'movie 1 (' not in printed.err and 'movie 2 (' not in printed.err
    assert (out / 'extra' / 'movie_000001_stats.json').stat().st_mtime_ns == first_stats
    result = json.loads((out / 'session.json').read_text())
    states = {os.path.basename(m['file']): (m['id'], m['state']) for m in result['movies']}
    assert states['movie_000.mrc'] == (1, 'ok') and states['movie_002.mrc'][1] == 'ok'
    assert states['movie_broken.mrc'][1] == 'failed'
    broken = next(m for m in result['movies'] if m['state'] == 'failed')
    assert 'movie_broken.mrc' in broken['reason']
    assert result['failed_movies'] == [broken['id']]
    assert sorted(result['session']['movies']) == [1, 2, 3]   # the bad movie adds nothing
    assert 'could not be analysed' in (out / 'warnings.txt').read_text()
    after = fingerprints(folder) | fingerprints(raw)
    del after[raw / 'movie_002.mrc'], after[raw / 'movie_broken.mrc']
    assert after == before


def check_two_movies(folder, out, reference, *options):
    status = main(['check', str(folder / 'raw' / 'movie_00[01].mrc'), '--gain',
                   str(folder / reference), '-o', str(out)] + FAST + list(options))
    return status, json.loads((out / 'session.json').read_text())


@pytest.mark.parametrize('reference, options', [('columns.mrc', []),
                                                ('rot180.mrc', ['--no-orientation-check'])])
def test_wrong_reference_flagged_exit_1(session, tmp_path, capsys, reference, options):
    folder, _ = session
    status, result = check_two_movies(folder, tmp_path / 'out', reference, *options)
    printed = capsys.readouterr()
    assert status == 1, printed.err
    assert result['flagged'] is True and result['flagged_movies'] == [1, 2]
    assert all(m['verdict']['reasons'] for m in result['movies'])
    assert 'flagged: movies 1-2' in printed.out
    assert 'movie_000001' in (tmp_path / 'out' / 'warnings.txt').read_text()
    searched = (tmp_path / 'out' / 'extra' / 'orientation.json').exists()
    assert searched == ('--no-orientation-check' not in options)
    if reference == 'columns.mrc':   # two processes give what one gives
        status, two = check_two_movies(folder, tmp_path / 'jobs2', reference, '--jobs', '2')
        assert status == 1
        for one, other in zip(result['movies'], two['movies']):
            assert (one['id'], one['verdict'], one['statistics']) == \
                (other['id'], other['verdict'], other['statistics'])
        assert result['session'] == two['session']


def test_orientation_found_on_tiff_movies(tmp_path, capsys):
    """TIFF movies and a reference stored rotated by 180 degrees: the orientation is found
    from the movies (as the protocol finds it), the oriented copy is used, nothing is
    flagged; the reference file is left as it was."""
    import tifffile
    from scipion_gain.simulate import simulate_frames
    detector = simulate_gain(SHAPE, rng=1, pixel_scatter=0.03, sector_spread=0.1,
                             column_spread=0.05, row_spread=0.03, flat_field=0.1)
    raw = tmp_path / 'raw'
    raw.mkdir()
    for index in range(3):
        frames = np.stack(list(simulate_frames(SHAPE, 12, detector.gain, dose=3.0,
                                               rng=10 + index, specimen=False)))
        tifffile.imwrite(raw / f'movie_{index}.tiff', np.round(frames).astype(np.uint8))
    write_mrc(str(tmp_path / 'rot.mrc'), np.ascontiguousarray(np.rot90(detector.correction, 2)))
    before = fingerprints(tmp_path)
    status = main(['check', str(raw / '*.tiff'), '--gain', str(tmp_path / 'rot.mrc'),
                   '-o', str(tmp_path / 'out')] + FAST[:-1])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert 'MotionCor2 -RotGain 2 -FlipGain 0' in printed.err
    decision = json.loads((tmp_path / 'out' / 'extra' / 'orientation.json').read_text())
    transform = decision['orientation']['transform']
    assert (transform['rotation'], transform['flip']) == (2, 0)
    stats = json.loads((tmp_path / 'out' / 'extra' / 'movie_000001_stats.json').read_text())
    assert stats['gain_reference'] == 'oriented'
    assert {p: h for p, h in fingerprints(tmp_path).items() if 'out' not in p.parts} == before


def test_missing_file_exit_2_one_line(session, tmp_path, capsys):
    folder, _ = session
    out = tmp_path / 'out'
    status = main(['check', str(folder / 'raw' / 'movie_000.mrc'),
                   str(tmp_path / 'nothing.mrc'), '-o', str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count('\n') == 1 and 'nothing.mrc: no such file' in err
    assert not out.exists()


def test_jobs_with_slurm_refused(session, tmp_path, capsys):
    """SLURM decides how many movie jobs run at once: --jobs with --slurm is bad input,
    refused before any job is submitted or any file written."""
    folder, _ = session
    out = tmp_path / 'out'
    status = main(['check', str(folder / 'raw' / 'movie_000.mrc'), '-o', str(out),
                   '--slurm', '--jobs', '2'])
    err = capsys.readouterr().err
    assert status == 2 and err.count('\n') == 1 and '--jobs with --slurm' in err
    assert not out.exists()


def test_output_folder_holding_the_movies_refused(session, capsys):
    folder, _ = session
    before = fingerprints(folder / 'raw')
    status = main(['check', str(folder / 'raw' / '*.mrc'), '-o', str(folder / 'raw')])
    err = capsys.readouterr().err
    assert status == 2 and err.count('\n') == 1 and 'holds the movie folder' in err
    assert fingerprints(folder / 'raw') == before


def test_resume_with_other_settings_refused(session, tmp_path, capsys):
    folder, _ = session
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'extra').mkdir()
    (out / 'extra' / 'check.json').write_text(json.dumps({'format': 1, 'gain': None}))
    status = main(['check', str(folder / 'raw' / 'movie_000.mrc'), '-o', str(out)])
    err = capsys.readouterr().err
    assert status == 2 and 'checked before with other' in err


def test_follow_takes_movies_as_they_are_written(session, tmp_path, capsys):
    """A writer adds a movie every second while --follow watches the folder; the command
    ends after the quiet time with every movie analysed, numbered in arrival order."""
    folder, detector = session
    raw = tmp_path / 'raw'
    raw.mkdir()
    names = ['movie_000.mrc', 'movie_001.mrc', 'movie_002.mrc']

    def writer():
        for name in names:
            time.sleep(1.0)
            data = (folder / 'raw' / name).read_bytes()
            with open(raw / name, 'wb') as handle:   # written in two parts, as a camera does
                handle.write(data[:len(data) // 2])
                handle.flush()
                time.sleep(0.3)
                handle.write(data[len(data) // 2:])

    thread = threading.Thread(target=writer)
    thread.start()
    started = time.time()
    try:
        status = main(['check', str(raw / '*.mrc'), '--gain', str(folder / 'exact.mrc'),
                       '--no-orientation-check', '-o', str(tmp_path / 'out'), '--follow',
                       '--quiet-time', '4', '--stable-time', '1', '--frames-per-movie', '0',
                       '-q'])   # the report at most every 30 s, as by default
    finally:
        thread.join()
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert time.time() - started >= 3 + 4   # waited for the writer, then the quiet time
    result = json.loads((tmp_path / 'out' / 'session.json').read_text())
    assert [(m['id'], os.path.basename(m['file']), m['state']) for m in result['movies']] == \
        [(1, names[0], 'ok'), (2, names[1], 'ok'), (3, names[2], 'ok')]
    for movie in result['movies']:   # each analysed from the whole file, not half of it
        path = tmp_path / 'out' / 'extra' / f"movie_{movie['id']:06d}_stats.json"
        assert json.loads(path.read_text())['frames'] == FRAMES
        arrived = (raw / os.path.basename(movie['file'])).stat().st_mtime
        assert path.stat().st_mtime - arrived < 30


def test_terminal_lines_say_flagged_or_ok_up_front():
    """A movie's line and the closing line name the verdict first ('FLAGGED: ...' or
    'ok: ...'), so a log is scanned by its first word; the quiet sentence's ': ok' is
    not said twice."""
    import io
    from scipion_gain.commands.check import Terminal, summary_line
    flagged = {'flagged': True, 'reasons': ['column pattern 2.93 % (69 times its noise)'],
               'dqe_loss': 0.0085,
               'sentence': 'the reference leaves structure beyond noise: column pattern 2.93 % '
                           '(69 times its noise); it costs 0.85 % of the DQE at 10 e/px: check '
                           'or replace the gain reference'}
    quiet = {'flagged': False, 'reasons': [], 'dqe_loss': 0.0,
             'sentence': "no structure beyond the estimate's noise (pixel noise 31 % of the "
                         "local level): ok"}
    stream = io.StringIO()
    terminal = Terminal(False, stream)
    terminal.movie({'id': 1, 'file': '/x/movie_1.mrc'}, {'verdict': flagged}, None, 1, 2, 1, 0)
    terminal.movie({'id': 2, 'file': '/x/movie_2.mrc'}, {'verdict': quiet}, None, 2, 2, 1, 0)
    assert stream.getvalue().splitlines() == [
        '[1/2] movie 1 (movie_1.mrc): FLAGGED: the reference leaves structure beyond noise: '
        'column pattern 2.93 % (69 times its noise); it costs 0.85 % of the DQE at 10 e/px: '
        'check or replace the gain reference',
        "[2/2] movie 2 (movie_2.mrc): ok: no structure beyond the estimate's noise (pixel "
        "noise 31 % of the local level)"]
    result = {'movies': [{'id': 1, 'state': 'flagged'}, {'id': 2, 'state': 'ok'}],
              'flagged_movies': [1], 'failed_movies': [], 'session': {'verdict': quiet}}
    assert summary_line(result, 2, 'DIR') == (
        "2 movies checked (2 new); flagged: movies 1; session: ok: no structure beyond the "
        "estimate's noise (pixel noise 31 % of the local level) -> DIR/index.html")


def test_a_refused_resume_names_the_settings_that_differ():
    from scipion_gain.commands.check import settings_changes
    before = {'format': 1, 'gain': '/data/a.mrc',
              'settings': {'verdict': {'max_dqe_loss': 0.001}, 'estimator': {'method': 'robust'}}}
    now = {'format': 1, 'gain': '/data/a.mrc',
           'settings': {'verdict': {'max_dqe_loss': 0.005}, 'estimator': {'method': 'robust'}}}
    assert settings_changes(before, now) == [
        'settings.verdict.max_dqe_loss: 0.001 before, 0.005 now']
    assert settings_changes(before, before) == []
    assert settings_changes({'gain': None}, {'gain': '/data/b.mrc'}) == [
        'gain: none before, "/data/b.mrc" now']


def test_on_a_terminal_flagged_and_failed_movies_get_their_line_above_the_bar():
    import io
    from scipion_gain.commands.check import Terminal

    class Screen(io.StringIO):
        def isatty(self):
            return True
    flagged = {'flagged': True, 'reasons': ['column pattern 2.93 %'], 'dqe_loss': 0.0085,
               'sentence': 'the reference leaves structure beyond noise: column pattern 2.93 %'}
    quiet = {'flagged': False, 'reasons': [], 'dqe_loss': 0.0, 'sentence': 'no structure: ok'}
    screen = Screen()
    terminal = Terminal(False, screen)
    terminal.movie({'id': 1, 'file': '/x/a.mrc'}, {'verdict': quiet}, None, 1, 3, 0, 0)
    terminal.movie({'id': 2, 'file': '/x/b.mrc'}, {'verdict': flagged}, None, 2, 3, 1, 0)
    terminal.movie({'id': 3, 'file': '/x/c.mrc'}, None, 'cannot read it', 3, 3, 1, 1)
    lines = [part.split('\r\033[K')[-1] for part in screen.getvalue().split('\n')]
    assert lines[:2] == ['[2/3] movie 2 (b.mrc): FLAGGED: the reference leaves structure '
                         'beyond noise: column pattern 2.93 %',
                         '[3/3] movie 3 (c.mrc): failed: cannot read it']
    assert lines[2].startswith('[##############################] 3/3 movies, 1 flagged, 1 failed')
    assert 'movie 1 (a.mrc)' not in screen.getvalue()   # an ok movie moves the bar only
