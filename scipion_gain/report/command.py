"""`scipion-gain report RUN_FOLDER_OR_STATS... -o REPORT_DIR`: PNG figures and one HTML page."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        'report', help='write the figures of a run as PNG files and a self-contained HTML page',
        description='Read a protocol run folder (summary files, extra/movie_*_stats.json, '
                    'extra/movie_*_gain.mrc, accumulated_gain.mrc) or statistics JSON files '
                    '(scipion-gain estimate --json) and write the time line of the percentiles, '
                    'std and ratios with the paper\'s thresholds, the gain histograms, the gain '
                    'images and the defect map as PNG files, plus index.html with the images '
                    'embedded and a table of movies, flagged ones highlighted.')
    parser.add_argument('inputs', nargs='+', metavar='RUN_FOLDER_OR_STATS',
                        help='a run folder, or statistics JSON files in time order')
    parser.add_argument('-o', '--output', required=True, metavar='REPORT_DIR',
                        help='folder to write into (created if missing)')
    parser.add_argument('--title', help='page title (default: from the input name)')
    parser.add_argument('--movie-images', type=int, default=8, metavar='N',
                        help='gain images of at most N movies spread over the run, plus the '
                             'first flagged one (default 8)')
    parser.set_defaults(func=run_report)
    return parser


def run_report(args):
    import matplotlib
    matplotlib.use('Agg', force=False)  # no display needed; figures never use pyplot anyway
    from .html import _title, write_report
    from .run_folder import load

    data = load(args.inputs)
    for note in data.notes:
        print(f"note: {note}")
    index = write_report(data, args.output, title=args.title or _title(args.inputs),
                         movie_images=max(0, args.movie_images))
    flagged = data.flagged_indices()
    print(f"report of {len(data.movies)} movie(s), {len(flagged)} flagged -> {index}")
    return 0
