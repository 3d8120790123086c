"""The ``scipion-gain`` commands, one module each, sharing :mod:`.common`.

    scipion-gain estimate MOVIE... -o GAIN.mrc ...      (commands.estimate)
    scipion-gain orient MOVIE... --gain REF -o OUT.mrc  (commands.orient)
    scipion-gain check MOVIE... [--gain REF] -o DIR     (commands.check: a session judged
                                                         as the protocol judges it)
    scipion-gain report RUN_OR_STATS... -o REPORT_DIR   (commands.report)
    scipion-gain movie-job JOB.json                     (commands.movie_job: the protocol's
                                                         per-movie work, scipion_gain.movie_job)

Every command checks its output paths against its inputs and each other
before any work, writes its files all together at the end or not at all, and
ends a failure a user can cause with one line on stderr and exit status 2
(see :mod:`.common`). ``scipion_gain.cli`` is the entry point.
"""
import argparse
import importlib
import sys

from .. import __version__
from . import common

COMMANDS = ('estimate', 'orient', 'check', 'report', 'movie_job')
EXAMPLES = '''examples:
  check a session's movies against their gain reference, with a report (the pattern
  quoted: check expands it, past the shell's limit on arguments, and --follow watches it):
    scipion-gain check '/data/session/*.tif' --gain gain.mrc -o gain_check
  estimate a gain (or, with --gain, the residual a reference leaves):
    scipion-gain estimate movie_*.mrc -o gain.mrc --json gain.json
  find the orientation of a gain reference:
    scipion-gain orient movie_*.mrc --gain gain.mrc -o gain_oriented.mrc
  the HTML report of a Scipion run folder:
    scipion-gain report Runs/000089_GainProtMovieGain -o report
'''


def build_parser():
    parser = common.OneLineParser(
        prog='scipion-gain', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Estimate and validate the gain of direct electron detectors from movies. '
                    'Gain maps written here MULTIPLY raw frames and have mean 1.',
        epilog=EXAMPLES)
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    shared = common.OneLineParser(add_help=False)
    common.add_common_options(shared)
    subparsers = parser.add_subparsers(dest='command', required=True)
    for name in COMMANDS:
        importlib.import_module(f'{__name__}.{name}').add_parser(subparsers, parents=[shared])
    return parser


def main(argv=None):
    common.tune_allocator()   # before NumPy and any thread: see its docstring
    args = build_parser().parse_args(argv)
    return common.run_command(args)


if __name__ == '__main__':
    sys.exit(main())
