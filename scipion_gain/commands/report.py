"""`scipion-gain report RUN_FOLDER_OR_STATS... -o REPORT_DIR`: PNG figures and one HTML page.

The report is drawn into a temporary folder beside REPORT_DIR and its files are
moved in only when all of them are written: a failed or interrupted run
leaves an earlier report in REPORT_DIR as it was.
"""
import argparse
import shutil
from pathlib import Path

from . import common


def residual_range(text):
    """The residual maps' scale, 1 +- this: '5', '5%' (per cent) or '0.05'; in (0, 1)."""
    value = text.strip().rstrip('%').strip()
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if text.strip().endswith('%') or number >= 1:
        number /= 100.0
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"the residual range must be between 0 and 100 %, "
                                         f"not {text!r}")
    return number


def add_parser(subparsers, parents=()):
    parser = subparsers.add_parser(
        'report', parents=list(parents),
        help='write the report of a run: one HTML page and its figures',
        description='Read a protocol run folder (summary files, extra/movie_*_stats.json, '
                    'the maps beside them) or statistics JSON files (scipion-gain estimate '
                    '--json) and write index.html: a header (project, protocol, the gain '
                    'reference judged, session, date), the conclusion, the time line of the verdict and the paper\'s '
                    'statistics with its thresholds, histograms, power spectra of the summed '
                    'movies, the accumulated estimate, the defect maps, a thumbnail of every '
                    'movie linked to its full-size figure, the table of every movie, and the '
                    'methods. Movies are named by their id.')
    parser.add_argument('inputs', nargs='+', metavar='RUN_FOLDER_OR_STATS',
                        help='a run folder, or statistics JSON files in time order')
    parser.add_argument('-o', '--output', required=True, metavar='REPORT_DIR',
                        help='folder to write into (created if missing; never an input folder)')
    parser.add_argument('--title', help='page title (default: from the project and run)')
    parser.add_argument('--movie-images', type=common.nonnegative_int, default=60, metavar='N',
                        help='full-size figures of every movie when there are at most N, else '
                             'of N spread over the run plus the first flagged one; every movie '
                             'gets a thumbnail (default 60)')
    parser.add_argument('-q', '--quiet', action='store_true', help='no progress on stderr')
    parser.add_argument('--residual-range', type=residual_range, default=0.05, metavar='PERCENT',
                        help='residual maps are drawn on one fixed scale, 1 +- this, the same '
                             'for every movie (default 5 %%; "3", "3%%" or "0.03")')
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


def publish_report(data, out, **options):
    """Write the report of ``data`` (a RunData) into folder ``out``: drawn in a temporary
    folder beside it, then moved in, index.html last; an earlier report stays as it was
    when drawing fails. ``options``: those of report.html.write_report."""
    import matplotlib
    matplotlib.use('Agg', force=False)  # no display needed; figures never use pyplot anyway
    from ..io.atomic import WriteError, move_into_place, temp_path
    from ..report.html import write_report
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(temp_path(out))
    try:
        try:
            write_report(data, staging, **options)
            out.mkdir(exist_ok=True)
            for path in sorted(staging.iterdir(), key=lambda p: p.name == 'index.html'):
                move_into_place(path, out / path.name)  # the page last: it names the figures
        except OSError as exc:
            if exc.errno in common.WRITE_ERRNOS or str(staging) in str(exc.filename or ''):
                raise WriteError(exc.errno, exc.strerror or str(exc), str(out)) from None
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / 'index.html'


def run_report(args):
    from ..report.run_folder import conclusion, load

    common.check_outputs({}, _inputs(args.inputs), folders={'-o': args.output})
    data = load(args.inputs)
    for note in data.notes:
        print(f"note: {note}")
    out = Path(args.output)
    publish_report(data, out, title=args.title, movie_images=args.movie_images,
                   residual_range=args.residual_range,
                   progress=common.Progress('report', quiet=args.quiet, unit='figure'))
    flagged = data.flagged_ids()
    movies = len(data.movies)
    print(f"report of {movies} movie{'s' if movies != 1 else ''}, {len(flagged)} flagged -> "
          f"{out / 'index.html'}")
    print(conclusion(data))
    return 0
