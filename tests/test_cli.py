"""The `scipion-gain estimate` command: its JSON contract, progress and bad input."""
import json
import os
import platform
import subprocess
import sys

import mrcfile
import numpy as np
import pytest

from scipion_gain.cli import main
from scipion_gain.simulate import simulate_gain, simulate_movie

SHAPE = (128, 128)


@pytest.fixture(scope='module')
def movie(tmp_path_factory):
    folder = tmp_path_factory.mktemp('movies')
    gain = simulate_gain(SHAPE, rng=2)
    return str(simulate_movie(str(folder / 'movie.mrc'), SHAPE, 8, gain.gain, dose=1.5, rng=3)), gain


def test_json_holds_the_stable_keys(tmp_path, movie):
    out, stats = tmp_path / 'g.mrc', tmp_path / 's.json'
    assert main(['estimate', movie[0], '-o', str(out), '--json', str(stats), '-q']) == 0
    report = json.loads(stats.read_text())
    assert set(report['statistics']) >= {'mean', 'std', 'min', 'max', 'p2.5', 'p25', 'p50', 'p75', 'p97.5'}
    assert set(report['ratios']) == {'p97.5/p2.5', 'max/p97.5'}
    assert set(report['flags']) == {'std', 'percentile_ratio', 'max_ratio'}
    assert isinstance(report['flagged'], bool)
    assert report['frames'] == 8 and report['device'] == 'cpu'
    with mrcfile.open(str(out)) as mrc:
        assert mrc.data.shape == SHAPE and mrc.data.dtype == np.float32
        assert b'multiplies raw frames' in mrc.header.label[1]
        assert mrc.data.mean() == pytest.approx(report['statistics']['mean'], abs=1e-4)


def test_residual_with_gain_reference(tmp_path, movie, capsys):
    reference = tmp_path / 'ref.mrc'
    with mrcfile.new(str(reference)) as mrc:
        mrc.set_data(movie[1].correction)
    before = reference.read_bytes()
    stats = tmp_path / 's.json'
    assert main(['estimate', movie[0], '-o', str(tmp_path / 'r.mrc'), '--gain', str(reference),
                 '--json', str(stats), '-q']) == 0
    assert json.loads(stats.read_text())['kind'] == 'residual'
    assert reference.read_bytes() == before  # the user's input is never written
    # the exact reference: 'ok' said once, before the sentence (it read 'ok: ...: ok')
    verdict, = [line for line in capsys.readouterr().out.splitlines() if 'verdict:' in line]
    assert verdict.startswith("  verdict: ok: no structure beyond the estimate's noise (pixel "
                              "noise ") and verdict.endswith(' of the local level)'), verdict


def _run(args):
    return subprocess.run([sys.executable, '-m', 'scipion_gain.cli'] + args, capture_output=True,
                          text=True)


def test_progress_goes_to_stderr(tmp_path, movie):
    proc = _run(['estimate', movie[0], '-o', str(tmp_path / 'g.mrc')])
    assert proc.returncode == 0
    assert 'frame 8/8 (100 %)' in proc.stderr
    # after the last frame the estimate's own passes and the judging run without progress
    # (this 128 x 128 frame is too small for the robust model: the SME reads it again)
    last = [line for line in proc.stderr.splitlines() if 'frame 8/8' in line]
    assert last and last[-1].endswith('; every frame read; estimating the map and judging it')
    assert 'gain of 8 frames on cpu' in proc.stdout


@pytest.mark.parametrize('case', ['missing', 'garbage', 'empty', 'wrong_gain', 'truncated'])
def test_bad_input_is_one_line_and_nothing_written(tmp_path, movie, case):
    out = tmp_path / 'g.mrc'
    args = ['estimate', movie[0], '-o', str(out)]
    if case == 'missing':
        args[1] = str(tmp_path / 'nope.mrc')
        expected = 'no such file'
    elif case == 'garbage':
        bad = tmp_path / 'bad.mrc'
        bad.write_bytes(b'this is not an MRC file at all' * 10)
        args[1] = str(bad)
        expected = 'bad.mrc'
    elif case == 'empty':
        empty = tmp_path / 'empty.mrc'
        empty.write_bytes(b'')
        args[1] = str(empty)
        expected = 'empty.mrc'
    elif case == 'truncated':
        cut = tmp_path / 'cut.mrc'
        cut.write_bytes(open(movie[0], 'rb').read()[:1024 + 100])
        args[1] = str(cut)
        expected = 'no complete'
    else:
        reference = tmp_path / 'wide_gain.mrc'
        with mrcfile.new(str(reference)) as mrc:
            mrc.set_data(np.ones((128, 256), np.float32))
        args += ['--gain', str(reference)]
        expected = 'gain reference is 256 x 128, the movie frames are 128 x 128'
    proc = _run(args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('scipion-gain estimate: error:')
    assert expected in lines[0]
    assert not out.exists()
    assert not [name for name in os.listdir(tmp_path) if name.endswith('.tmp')]


def test_unknown_option_values_are_refused(tmp_path, movie):
    proc = _run(['estimate', movie[0], '-o', str(tmp_path / 'g.mrc'), '--sigma', 'wide'])
    assert proc.returncode == 2 and "sigma must be 'auto' or a finite number" in proc.stderr


def test_help_gives_examples_every_option_its_words_and_marks_the_internal_command(capsys):
    from scipion_gain.commands import build_parser
    with pytest.raises(SystemExit):
        main(['--help'])
    top = capsys.readouterr().out
    assert 'examples:' in top and "scipion-gain check '/data/session/*.tif' --gain gain.mrc" in top
    assert 'movie-job           internal:' in top
    examples = [line.split()[1:] for line in top.split('examples:')[1].splitlines()
                if line.strip().startswith('scipion-gain')]
    parser = build_parser()
    for words in examples:  # every example parses (the files need not exist to parse)
        args = parser.parse_args([w for w in words])
        assert args.command == words[0]
    estimate = next(a for a in parser._subparsers._group_actions[0].choices['estimate']._actions
                    if '--ratio-threshold' in a.option_strings)
    assert 'p97.5 / p2.5' in estimate.help and estimate.default == 1.15
    for action in parser._subparsers._group_actions[0].choices['estimate']._actions:
        assert action.help, action.option_strings  # no option without words


@pytest.mark.skipif(not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc',
                    reason='glibc only')
def test_the_allocator_is_set_under_glibc_and_numpy_asks_for_no_huge_pages():
    # in a process of its own: it sets the whole process's allocator; NumPy is imported after
    code = ('from scipion_gain.commands.common import tune_allocator; '
            'import sys, os; ok = tune_allocator(); import numpy; '
            'sys.exit(0 if ok and os.environ["NUMPY_MADVISE_HUGEPAGE"] == "0" else 3)')
    env = {k: v for k, v in os.environ.items() if k != 'NUMPY_MADVISE_HUGEPAGE'}
    assert subprocess.run([sys.executable, '-c', code], env=env).returncode == 0


def test_the_command_line_imports_no_numpy_before_the_allocator_is_set():
    # NumPy reads NUMPY_MADVISE_HUGEPAGE when imported, glibc fixes its arenas at the first
    # thread: importing the command line must not import NumPy
    code = "import sys, scipion_gain.cli; sys.exit(3 if 'numpy' in sys.modules else 0)"
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0


def test_a_users_huge_page_setting_is_kept():
    code = ('from scipion_gain.commands.common import tune_allocator; import sys, os; '
            'tune_allocator(); sys.exit(0 if os.environ["NUMPY_MADVISE_HUGEPAGE"] == "1" else 3)')
    env = dict(os.environ, NUMPY_MADVISE_HUGEPAGE='1')
    assert subprocess.run([sys.executable, '-c', code], env=env).returncode == 0


def test_the_allocator_is_left_alone_without_linux(monkeypatch):
    from scipion_gain.commands import common
    monkeypatch.setattr(common.sys, 'platform', 'darwin')
    monkeypatch.setenv('NUMPY_MADVISE_HUGEPAGE', '1')
    assert common.tune_allocator() is False
