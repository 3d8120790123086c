"""`scipion-gain report RUN_FOLDER_OR_STATS... -o REPORT_DIR`: PNG figures and one HTML page.

The report is drawn into a temporary folder beside REPORT_DIR and its files are
moved in only when all of them are written: a failed or interrupted run
leaves an earlier report in REPORT_DIR as it was.
"""
import os
import shutil
from pathlib import Path

from . import common


def add_parser(subparsers, parents=()):
    parser = subparsers.add_parser(
        'report', parents=list(parents),
        help='write the figures of a run as PNG files and a self-contained HTML page',
        description='Read a protocol run folder (summary files, extra/movie_*_stats.json, '
                    'extra/movie_*_gain.mrc, accumulated_gain.mrc) or statistics JSON files '
                    '(scipion-gain estimate --json) and write the time line of the percentiles, '
                    'std and ratios with the paper\'s thresholds, the gain histograms, the gain '
                    'images and the defect map as PNG files, plus index.html with the images '
                    'embedded and a table of movies, flagged ones highlighted.')
    parser.add_argument('inputs', nargs='+', metavar='RUN_FOLDER_OR_STATS',
                        help='a run folder, or statistics JSON files in time order')
    parser.add_argument('-o', '--output', required=True, metavar='REPORT_DIR',
                        help='folder to write into (created if missing; never an input folder)')
    parser.add_argument('--title', help='page title (default: from the input name)')
    parser.add_argument('--movie-images', type=common.nonnegative_int, default=8, metavar='N',
                        help='gain images of at most N movies spread over the run, plus the '
                             'first flagged one (default 8)')
    parser.set_defaults(func=run_report)
    return parser


def _inputs(paths):
    """(what, path) of every input and of the folders the report reads from."""
    out = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            out.append(('run folder', path))
            if (path / 'extra').is_dir():
                out.append(('run folder', path / 'extra'))
        else:
            out.append(('statistics file', path))
    return out


def run_report(args):
    import matplotlib
    matplotlib.use('Agg', force=False)  # no display needed; figures never use pyplot anyway
    from ..io.atomic import WriteError, temp_path
    from ..report.html import _title, write_report
    from ..report.run_folder import load

    common.check_outputs({}, _inputs(args.inputs), folders={'-o': args.output})
    data = load(args.inputs)
    for note in data.notes:
        print(f"note: {note}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(temp_path(out))
    try:
        try:
            write_report(data, staging, title=args.title or _title(args.inputs),
                         movie_images=args.movie_images)
            out.mkdir(exist_ok=True)
            for path in sorted(staging.iterdir(), key=lambda p: p.name == 'index.html'):
                os.replace(path, out / path.name)  # the page last: it names the figures
        except OSError as exc:
            if exc.errno in common.WRITE_ERRNOS or str(staging) in str(exc.filename or ''):
                raise WriteError(exc.errno, exc.strerror or str(exc), str(out)) from None
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    flagged = data.flagged_indices()
    print(f"report of {len(data.movies)} movie(s), {len(flagged)} flagged -> {out / 'index.html'}")
    return 0
