"""The command line as a hostile but realistic user tries it.

Every case runs the installed command (the ``scipion-gain`` script beside this
interpreter, else ``python -m scipion_gain.cli``) in a subprocess and checks
the README's contract: bad input ends with ONE line on stderr and exit status
2 (or the run succeeds with a note saying what was wrong), the inputs are
byte-identical afterwards, an output that existed before a failed or
interrupted run is intact, and no temporary file is left behind.
"""
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from formats import write_mrc_stack, write_tiff_movie
from scipion_gain.simulate import simulate_gain, simulate_movie

SHAPE = (64, 64)
FRAMES = 6
SCRIPT = Path(sys.executable).with_name('scipion-gain')
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, '-m', 'scipion_gain.cli']
OLD = b'an earlier output that must survive\n'


# --- fixtures and the contract's checks ---------------------------------------------------------

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """A small counting movie, its exact gain reference, and a stats JSON of it."""
    folder = tmp_path_factory.mktemp('hostile')
    truth = simulate_gain(SHAPE, rng=1)
    movie = simulate_movie(str(folder / 'movie.mrc'), SHAPE, FRAMES, truth.gain, dose=2.0, rng=2)
    reference = folder / 'reference.mrc'
    write_mrc_stack(reference, truth.correction.astype(np.float32))
    stats = folder / 'stats.json'
    proc = cli('estimate', movie, '-o', folder / 'first.mrc', '--json', stats, '-q')
    assert proc.returncode == 0, proc.stderr
    return {'folder': folder, 'movie': Path(movie), 'reference': reference, 'stats': stats}


def cli(*args, timeout=300, **options):
    return subprocess.run(COMMAND + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, **options)


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Watch:
    """Inputs and earlier outputs, to be found unchanged after the run."""

    def __init__(self, *paths):
        self.paths = [Path(p) for p in paths]
        self.before = {p: digest(p) for p in self.paths}

    def assert_unchanged(self):
        for path in self.paths:
            assert digest(path) == self.before[path], f"{path} was written"
        for folder in {p.parent for p in self.paths}:
            left = [p.name for p in folder.iterdir() if p.name.endswith('.tmp')]
            assert not left, f"temporary files left in {folder}: {left}"


def old_output(path):
    Path(path).write_bytes(OLD)
    return Path(path)


def assert_one_line(proc, command, *fragments, status=2):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"scipion-gain {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert 'Traceback' not in proc.stderr and 'Warning' not in proc.stderr
    return lines[0]


def assert_clean_success(proc):
    assert proc.returncode == 0, proc.stderr
    assert 'Traceback' not in proc.stderr and 'Warning' not in proc.stderr, proc.stderr
    noise = [line for line in proc.stderr.splitlines() if not line.startswith('note: ')]
    assert not noise, f"stderr beyond the notes: {noise}"


def read_map(path):
    with mrcfile.open(str(path), permissive=True) as mrc:
        return np.array(mrc.data)


# --- 1. an output is never an input, nor another output ------------------------------------------

@pytest.mark.parametrize('case', ['-o is the movie', '--json is the movie', '-o is the --gain file',
                                  '-o and --json the same file', '--defects is the movie',
                                  '--structure is the --gain file', '-o a symbolic link to the movie',
                                  '-o a hard link to the movie', '-o the movie by another spelling',
                                  '--json and --defects the same new file'])
def test_estimate_never_writes_over_an_input(data, tmp_path, case):
    movie, reference = data['movie'], data['reference']
    out = tmp_path / 'g.mrc'
    options = {'-o': out}
    if case == '-o is the movie':
        options['-o'] = movie
    elif case == '--json is the movie':
        options['--json'] = movie
    elif case == '-o is the --gain file':
        options.update({'-o': reference, '--gain': reference})
    elif case == '-o and --json the same file':
        options['--json'] = out
    elif case == '--defects is the movie':
        options['--defects'] = movie
    elif case == '--structure is the --gain file':
        options.update({'--structure': reference, '--gain': reference})
    elif case == '-o a symbolic link to the movie':
        (tmp_path / 'link.mrc').symlink_to(movie)
        options['-o'] = tmp_path / 'link.mrc'
    elif case == '-o a hard link to the movie':
        os.link(movie, tmp_path / 'hard.mrc')
        options['-o'] = tmp_path / 'hard.mrc'
    elif case == '-o the movie by another spelling':
        options['-o'] = f"{movie.parent}/../{movie.parent.name}/./{movie.name}"
    else:
        options.update({'--json': tmp_path / 'same', '--defects': tmp_path / 'same'})
    watch = Watch(movie, reference)
    args = ['estimate', movie] + [x for pair in options.items() for x in pair]
    started = time.perf_counter()
    line = assert_one_line(cli(*args), 'estimate')
    assert 'refusing' in line
    watch.assert_unchanged()
    assert not out.exists() or case == '-o and --json the same file' and not out.exists()
    assert not (tmp_path / 'same').exists()
    assert time.perf_counter() - started < 60  # refused before any work (generous under load)


@pytest.mark.parametrize('case', ['-o is the movie', '--json is the --gain file',
                                  '-o and --json the same file'])
def test_orient_never_writes_over_an_input(data, tmp_path, case):
    movie, reference = data['movie'], data['reference']
    output, result = tmp_path / 'o.mrc', tmp_path / 'o.json'
    if case == '-o is the movie':
        output = movie
    elif case == '--json is the --gain file':
        result = reference
    else:
        result = output
    watch = Watch(movie, reference)
    line = assert_one_line(cli('orient', movie, '--gain', reference, '-o', output, '--json', result),
                           'orient')
    assert 'refusing' in line
    watch.assert_unchanged()


@pytest.mark.parametrize('case', ['-o is the stats file', '-o is the run folder',
                                  '-o an existing file'])
def test_report_never_writes_over_an_input(data, tmp_path, case):
    run = tmp_path / 'run'
    (run / 'extra').mkdir(parents=True)
    stats = run / 'extra' / 'movie_000001_stats.json'
    stats.write_bytes(data['stats'].read_bytes())
    watch = Watch(stats)
    if case == '-o is the stats file':
        proc, fragment = cli('report', stats, '-o', stats), 'refusing'
    elif case == '-o is the run folder':
        proc, fragment = cli('report', run, '-o', run), 'refusing'
    else:
        existing = old_output(tmp_path / 'report.html')
        watch = Watch(stats, existing)
        proc, fragment = cli('report', stats, '-o', existing), 'not a folder'
    assert_one_line(proc, 'report', fragment)
    watch.assert_unchanged()
    assert sorted(p.name for p in (run / 'extra').iterdir()) == ['movie_000001_stats.json']


# --- 2. every failure a user can cause: one line, exit 2 ----------------------------------------

@pytest.mark.parametrize('option, value, fragment', [
    ('--sigma', 'nan', 'sigma'), ('--sigma', 'inf', 'sigma'), ('--sigma', '-1', 'sigma'),
    ('--sigma', 'wide', 'sigma'), ('--device', 'banana', 'device'), ('--device', 'gpu:x', 'device'),
    ('--std-threshold', 'nan', 'threshold'), ('--ratio-threshold', '-inf', 'threshold'),
    ('--max-ratio-threshold', '0', 'threshold'), ('--tolerance', 'nan', 'tolerance'),
    ('--iterations', '0', 'iterations'), ('--frame-step', 'two', 'frame-step')])
def test_option_values_are_checked_by_the_parser(data, tmp_path, option, value, fragment):
    watch = Watch(data['movie'])
    proc = cli('estimate', data['movie'], '-o', tmp_path / 'g.mrc', option, value)
    line = assert_one_line(proc, 'estimate', fragment)
    assert option in line or fragment in line
    watch.assert_unchanged()
    assert not (tmp_path / 'g.mrc').exists()


def test_unknown_gpu_index_and_missing_gpu_are_one_line(data, tmp_path):
    proc = cli('estimate', data['movie'], '-o', tmp_path / 'g.mrc', '--device', 'gpu:99')
    assert_one_line(proc, 'estimate', 'GPU')


def test_json_that_is_a_folder_is_refused_before_the_map_is_written(data, tmp_path):
    (tmp_path / 'stats').mkdir()
    old = old_output(tmp_path / 'g.mrc')
    watch = Watch(data['movie'], old)
    proc = cli('estimate', data['movie'], '-o', old, '--json', tmp_path / 'stats')
    assert_one_line(proc, 'estimate', 'stats', 'folder')
    watch.assert_unchanged()


def _unwritable_folder(tmp_path):
    folder = tmp_path / 'read-only'
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path('/sys')):
        try:
            fd = os.open(candidate / '.probe', os.O_CREAT | os.O_WRONLY, 0o644)
        except OSError:
            return candidate
        os.close(fd)
        os.remove(candidate / '.probe')
    pytest.skip('no folder that this user cannot write to (root without a read-only /sys)')


def test_output_folder_that_cannot_be_written(data, tmp_path):
    folder = _unwritable_folder(tmp_path)
    try:
        watch = Watch(data['movie'])
        proc = cli('estimate', data['movie'], '-o', folder / 'g.mrc')
        assert_one_line(proc, 'estimate', str(folder), 'cannot write')
        watch.assert_unchanged()
    finally:
        (tmp_path / 'read-only').chmod(0o755)


def _full_disk(limit=64 * 1024):
    """In the child: files cannot grow past ``limit`` bytes (EFBIG, as a full disk gives
    ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _nearly_full_disk():
    """Files cannot grow past 8 kB: a report's compact figures fit 64 kB, its page not 8."""
    _full_disk(8 * 1024)


@pytest.mark.parametrize('command', ['estimate', 'report'])
def test_disk_full_is_one_line_and_earlier_outputs_survive(data, tmp_path, command):
    if command == 'estimate':
        big = tmp_path / 'big.mrc'  # a 128 x 128 float32 map (64 kB + header) cannot be written
        simulate_movie(str(big), (128, 128), 4, simulate_gain((128, 128), rng=3).gain, rng=4)
        old_map, old_json = old_output(tmp_path / 'g.mrc'), old_output(tmp_path / 'g.json')
        watch = Watch(big, old_map, old_json)
        proc = cli('estimate', big, '-o', old_map, '--json', old_json, '-q', preexec_fn=_full_disk)
    else:
        folder = tmp_path / 'report'
        folder.mkdir()
        old_page = old_output(folder / 'index.html')
        watch = Watch(data['stats'], old_page)
        proc = cli('report', data['stats'], '-o', folder, preexec_fn=_nearly_full_disk)
    assert_one_line(proc, command, 'cannot write', 'File too large')
    watch.assert_unchanged()


def test_report_of_a_stats_file_with_null_ratios(data, tmp_path):
    broken = json.loads(data['stats'].read_text())
    broken['ratios'] = None
    (tmp_path / 'broken.json').write_text(json.dumps(broken))
    watch = Watch(tmp_path / 'broken.json')
    proc = cli('report', tmp_path / 'broken.json', '-o', tmp_path / 'out')
    assert_one_line(proc, 'report', 'broken.json', 'ratios')
    watch.assert_unchanged()


@pytest.mark.parametrize('case', ['constant frames', 'one frame', 'two rows', 'one column',
                                  'three rows'])
def test_numerical_warnings_stay_off_the_terminal(tmp_path, case):
    if case == 'constant frames':
        frames = np.full((4,) + SHAPE, 3, np.uint8)
    elif case == 'one frame':
        frames = np.random.default_rng(5).poisson(2.0, (1,) + SHAPE).astype(np.uint8)
    elif case == 'two rows':  # Eq. 2's smoothing reached past the frame: a ValueError
        frames = np.random.default_rng(6).poisson(2.0, (4, 2, 64)).astype(np.uint8)
    elif case == 'one column':
        frames = np.random.default_rng(6).poisson(2.0, (4, 64, 1)).astype(np.uint8)
    else:
        frames = np.random.default_rng(6).poisson(2.0, (4, 3, 64)).astype(np.uint8)
    write_mrc_stack(tmp_path / 'm.mrc', frames)
    watch = Watch(tmp_path / 'm.mrc')
    proc = cli('estimate', tmp_path / 'm.mrc', '-o', tmp_path / 'g.mrc', '-q')
    if proc.returncode == 0:
        assert_clean_success(proc)
        assert np.isfinite(read_map(tmp_path / 'g.mrc')).all()
    else:
        assert_one_line(proc, 'estimate')
    watch.assert_unchanged()
    verbose = cli('estimate', tmp_path / 'm.mrc', '-o', tmp_path / 'g2.mrc', '-q', '--verbose')
    assert verbose.returncode == proc.returncode


# --- 3. truncated movies ------------------------------------------------------------------------

@pytest.fixture(scope='module')
def truncated(tmp_path_factory):
    """Two truncated files: an LZW TIFF of 10 frames cut to 4 decodable, a half-length MRC."""
    folder = tmp_path_factory.mktemp('truncated')
    frames = np.random.default_rng(7).poisson(1.5, (10, 256, 256)).astype(np.uint8)
    write_tiff_movie(folder / 'full.tif', frames, compression='lzw', pages=False)
    data = (folder / 'full.tif').read_bytes()
    (folder / 'cut.tif').write_bytes(data[:int(len(data) * 0.42)])
    write_mrc_stack(folder / 'full.mrc', frames.astype(np.float32))
    data = (folder / 'full.mrc').read_bytes()
    (folder / 'half.mrc').write_bytes(data[:1024 + 5 * 256 * 256 * 4])
    return folder


@pytest.mark.parametrize('name, complete', [('cut.tif', 4), ('half.mrc', 5)])
def test_truncated_movie_strict_by_default_and_lenient_on_request(truncated, tmp_path, name,
                                                                   complete):
    movie = truncated / name
    old = old_output(tmp_path / 'g.mrc')
    watch = Watch(movie, old)
    line = assert_one_line(cli('estimate', movie, '-o', old), 'estimate',
                           f"truncated: {complete} of 10 frames complete", '--lenient')
    assert name in line
    watch.assert_unchanged()
    strict = cli('estimate', movie, '-o', old, '--strict')
    assert strict.returncode == 2 and strict.stderr == cli('estimate', movie, '-o', old).stderr
    proc = cli('estimate', movie, '-o', tmp_path / 'l.mrc', '--json', tmp_path / 'l.json',
               '--lenient', '-q')
    assert_clean_success(proc)
    assert f"truncated: {complete} of 10 frames complete; lenient" in proc.stderr
    report = json.loads((tmp_path / 'l.json').read_text())
    assert report['frames'] == complete
    assert any('lenient' in note for note in report['notes'])
    assert report['input']['truncated'] == {str(movie): {
        'complete': complete, 'claimed': 10, 'unit': 'frames', 'used': 'complete frames (lenient)'}}
    Watch(movie).assert_unchanged()


# --- 4. gain references: one door, one policy ---------------------------------------------------

def test_gain_reference_with_zero_negative_and_nan_pixels_is_masked_and_said(data, tmp_path):
    correction = read_map(data['reference']).astype(np.float32)
    spoiled = correction.copy()
    spoiled[3, 5], spoiled[10, 20], spoiled[40, 41] = 0.0, -2.0, np.nan
    write_mrc_stack(tmp_path / 'ref.mrc', spoiled)
    watch = Watch(tmp_path / 'ref.mrc', data['movie'])
    proc = cli('estimate', data['movie'], '-o', tmp_path / 'r.mrc', '--gain', tmp_path / 'ref.mrc',
               '--json', tmp_path / 'r.json', '-q')
    assert_clean_success(proc)
    assert ("3 pixel(s) unusable (1 NaN, 1 zero, 1 negative) set to 1, so that the movies' "
            "own defect test judges them") in proc.stderr
    residual = read_map(tmp_path / 'r.mrc')
    assert np.isfinite(residual).all() and residual.mean() == pytest.approx(1, abs=1e-4)
    report = json.loads((tmp_path / 'r.json').read_text())
    assert any('unusable' in note for note in report['notes'])
    # the residual of an exact reference is flat: no pixel sent off by the masked ones
    assert residual.max() < 2 and residual.min() > 0.5
    watch.assert_unchanged()


# --- 8. what passed before, kept: bad files, missing folders ------------------------------------

def _bad_movie(folder, case):
    if case == 'missing':
        return folder / 'absent.mrc', 'no such file'
    if case == 'empty':
        (folder / 'empty.mrc').write_bytes(b'')
        return folder / 'empty.mrc', 'empty.mrc'
    if case == 'header only':
        write_mrc_stack(folder / 'h.mrc', np.zeros((10,) + SHAPE, np.float32))
        (folder / 'h.mrc').write_bytes((folder / 'h.mrc').read_bytes()[:1024])
        return folder / 'h.mrc', 'no complete 64 x 64 image'
    if case == 'zero frames':
        write_mrc_stack(folder / 'z.mrc', np.zeros((1,) + SHAPE, np.float32))
        with open(folder / 'z.mrc', 'r+b') as handle:
            handle.seek(8)
            handle.write(np.int32(0).tobytes())
        return folder / 'z.mrc', 'no frames'
    if case == 'unknown extension':
        (folder / 'movie.xyz').write_bytes(os.urandom(2000))
        return folder / 'movie.xyz', "unknown movie format '.xyz'"
    if case == 'random bytes as TIFF':
        (folder / 'r.tif').write_bytes(np.random.default_rng(8).bytes(5000))
        return folder / 'r.tif', 'not a readable TIFF'
    if case == 'random bytes as EER':
        (folder / 'r.eer').write_bytes(np.random.default_rng(9).bytes(5000))
        return folder / 'r.eer', 'r.eer'
    if case == 'a folder':
        (folder / 'movies').mkdir()
        return folder / 'movies', 'is a folder'
    raise ValueError(case)


@pytest.mark.parametrize('case', ['missing', 'empty', 'header only', 'zero frames',
                                  'unknown extension', 'random bytes as TIFF',
                                  'random bytes as EER', 'a folder'])
def test_bad_movie_files(tmp_path, case):
    movie, fragment = _bad_movie(tmp_path, case)
    old = old_output(tmp_path / 'g.mrc')
    watch = Watch(old, *([movie] if movie.is_file() else []))
    assert_one_line(cli('estimate', movie, '-o', old), 'estimate', fragment)
    watch.assert_unchanged()


def test_wrong_size_gain_and_missing_output_folder(data, tmp_path):
    write_mrc_stack(tmp_path / 'wide.mrc', np.ones((64, 128), np.float32))
    watch = Watch(data['movie'], tmp_path / 'wide.mrc')
    assert_one_line(cli('estimate', data['movie'], '-o', tmp_path / 'g.mrc', '--gain',
                        tmp_path / 'wide.mrc'), 'estimate', '128 x 64', '64 x 64')
    assert_one_line(cli('estimate', data['movie'], '-o', tmp_path / 'no' / 'g.mrc'), 'estimate',
                    'does not exist')
    assert_one_line(cli('estimate', data['movie'], '-o', tmp_path / 'g.mrc', '--json',
                        tmp_path / 'no' / 's.json'), 'estimate', 'does not exist')
    assert_one_line(cli('orient', data['movie'], '--gain', data['reference'], '-o',
                        tmp_path / 'no' / 'o.mrc'), 'orient', 'does not exist')
    watch.assert_unchanged()
    assert not (tmp_path / 'g.mrc').exists()


@pytest.mark.parametrize('signum, status, word', [(signal.SIGINT, 130, 'interrupted'),
                                                  (signal.SIGTERM, 143, 'terminated')])
def test_interrupted_run_leaves_earlier_outputs_and_no_temp(tmp_path, signum, status, word):
    movie = tmp_path / 'long.mrc'
    simulate_movie(str(movie), (256, 256), 200, simulate_gain((256, 256), rng=10).gain, rng=11)
    old_map, old_json = old_output(tmp_path / 'g.mrc'), old_output(tmp_path / 'g.json')
    watch = Watch(movie, old_map, old_json)
    child = subprocess.Popen(COMMAND + ['estimate', str(movie), '-o', str(old_map), '--json',
                                        str(old_json)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             # a shell's background job inherits SIGINT ignored; a user's
                             # terminal does not: start the child as a terminal would
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = child.stderr.readline()  # the first progress line: the work has started
    assert 'frame' in first, first
    child.send_signal(signum)
    _, rest = child.communicate(timeout=120)
    lines = (first + rest).strip().splitlines()
    assert child.returncode == status, (child.returncode, lines)
    assert lines[-1] == f"scipion-gain estimate: {word}", lines
    assert all('frame' in line for line in lines[:-1]), lines  # progress, then the one line
    watch.assert_unchanged()


# --- NaN / inf / zero frames inside movies (the lead's bad values stage) ------------------------

def _spoiled_movie(folder, **spoil):
    path = folder / 'spoiled.mrc'
    simulate_movie(str(path), SHAPE, FRAMES, simulate_gain(SHAPE, rng=12).gain, dose=2.0, rng=13,
                   spoil=spoil)
    return path


@pytest.mark.parametrize('spoil', [{'nan_patches': 1, 'patch_size': 8},
                                   {'inf_patches': 1, 'patch_size': 8},
                                   {'zero_frames': 1}])
def test_a_few_bad_values_give_a_result_with_a_note(tmp_path, spoil):
    movie = _spoiled_movie(tmp_path, **spoil)
    watch = Watch(movie)
    proc = cli('estimate', movie, '-o', tmp_path / 'g.mrc', '--json', tmp_path / 'g.json', '-q')
    assert_clean_success(proc)
    gain = read_map(tmp_path / 'g.mrc')
    assert np.isfinite(gain).all() and gain.mean() == pytest.approx(1, abs=1e-3)
    report = json.loads((tmp_path / 'g.json').read_text())
    assert report['statistics']['std'] > 0  # not "perfect": judged on the good pixels
    assert any(word in ' '.join(report['notes']).lower() for word in ('nan', 'inf', 'zero'))
    watch.assert_unchanged()


@pytest.mark.parametrize('case', ['all NaN', 'all zero'])
def test_a_movie_that_cannot_be_judged_is_one_line(tmp_path, case):
    value = np.nan if case == 'all NaN' else 0.0
    write_mrc_stack(tmp_path / 'm.mrc', np.full((FRAMES,) + SHAPE, value, np.float32))
    old = old_output(tmp_path / 'g.mrc')
    watch = Watch(tmp_path / 'm.mrc', old)
    assert_one_line(cli('estimate', tmp_path / 'm.mrc', '-o', old), 'estimate')
    watch.assert_unchanged()
