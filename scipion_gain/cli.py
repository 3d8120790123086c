"""The `scipion-gain` command line, for people outside Scipion.

    scipion-gain estimate MOVIE [MOVIE ...] -o GAIN.mrc [--gain REFERENCE] [--json STATS.json] ...

Every gain map it writes MULTIPLIES raw frames, has mean 1 and holds no NaN or
inf. Bad input ends the run with one line on stderr and exit status 2; nothing
half-written is left at an output path.
"""
import argparse
import os
import sys
import time

from . import __version__

EXIT_BAD_INPUT = 2


class Progress:
    """Progress of a long run on stderr: a rewritten line on a terminal, else every 10 %."""

    def __init__(self, label, stream=None, quiet=False):
        self.label = label
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.started = time.perf_counter()
        self.last_decile = -1

    def __call__(self, done, total):
        if self.quiet or total <= 0:
            return
        elapsed = time.perf_counter() - self.started
        line = f"{self.label}: frame {done}/{total} ({100 * done / total:.0f} %), {elapsed:.1f} s"
        if self.stream.isatty():
            self.stream.write('\r' + line + ('\n' if done == total else ''))
        else:
            decile = int(10 * done / total)
            if decile == self.last_decile:
                return
            self.last_decile = decile
            self.stream.write(line + '\n')
        self.stream.flush()


def write_json(path, data):
    """Write JSON atomically (temp file + rename): never half-written at ``path``."""
    from .io.results import write_json as write
    write(path, data)


def _sigma(text):
    if text == 'auto':
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sigma must be 'auto' or a number, not {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError("sigma must be >= 0")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def add_estimate_parser(subparsers):
    parser = subparsers.add_parser(
        'estimate', help='estimate the gain (or residual gain) of movies',
        description='Estimate the gain of a direct electron detector from movies '
                    '(Sorzano et al. 2018). The map written MULTIPLIES raw frames and has mean 1. '
                    'With --gain, frames are first multiplied by that reference and the result is '
                    'the residual gain, flat (all 1) when the reference is right.')
    parser.add_argument('movies', nargs='+', metavar='MOVIE', help='movie files (all frames of all movies give one estimate)')
    parser.add_argument('-o', '--output', required=True, metavar='GAIN.mrc', help='output gain map (MRC, float32)')
    parser.add_argument('--gain', metavar='REFERENCE', help='gain reference that multiplies raw frames: estimate the residual gain')
    parser.add_argument('--json', metavar='STATS.json', help='write statistics and flags as JSON')
    parser.add_argument('--method', choices=['sme', 'mean', 'std'], default='sme',
                        help='sme: the paper (default); mean, std: baselines (inverse per-pixel mean / std)')
    parser.add_argument('--reference', choices=['single', 'local'], default='single',
                        help='single: one reference histogram (Eq. 3, default); local: per line')
    parser.add_argument('--sigma', type=_sigma, default='auto', help="'auto' (search 0..3 step 0.5, default) or a value")
    parser.add_argument('--iterations', type=_positive_int, default=1, help='Eq. 7 iterations at most (default 1)')
    parser.add_argument('--tolerance', type=float, default=1e-3, help='stop iterating when the relative change is below (default 1e-3)')
    parser.add_argument('--frame-step', type=_positive_int, default=1, help='use every N-th frame (default 1)')
    parser.add_argument('--device', default='cpu', help='cpu (default), gpu, gpu:N or auto')
    parser.add_argument('--dark', metavar='DARK.mrc',
                        help='dark reference subtracted from every frame first (integrating cameras)')
    parser.add_argument('--defects', metavar='LABELS.mrc',
                        help='also write the defect label image (0 good, 1 dead, 2 hot, 3/4 dead/broken '
                             'row, 5/6 dead/broken column, 7 unusable)')
    parser.add_argument('--defect-file', metavar='DEFECTS.txt',
                        help='also write the defects as a MotionCor2 -DefectFile (x y w h per line)')
    parser.add_argument('--structure', metavar='MODEL.mrc',
                        help='also write the structure model: the map without its estimation noise '
                             '(the column and row patterns found; multiplies raw frames, mean 1)')
    parser.add_argument('--max-dqe-loss', type=float, default=0.1, metavar='PERCENT',
                        help='verdict: flag structure beyond noise that costs at least this percentage '
                             'of the DQE at the movie\'s dose (default 0.1)')
    parser.add_argument('--std-threshold', type=float, default=0.04)
    parser.add_argument('--ratio-threshold', type=float, default=1.15)
    parser.add_argument('--max-ratio-threshold', type=float, default=4.5)
    parser.add_argument('-q', '--quiet', action='store_true', help='no progress on stderr')
    parser.set_defaults(func=run_estimate)
    return parser


def run_estimate(args):
    from .estimator.analysis import AnalysisSettings, analyse
    from .estimator import EstimatorSettings, Thresholds
    from .estimator.verdict import VerdictSettings
    from .io import read_gain_reference, read_image
    from .io.results import AnalysisOutputs, write_analysis

    settings = AnalysisSettings(
        estimator=EstimatorSettings(method=args.method, reference=args.reference,
                                    sigma=args.sigma, iterations=args.iterations,
                                    tolerance=args.tolerance, frame_step=args.frame_step),
        thresholds=Thresholds(args.std_threshold, args.ratio_threshold,
                              args.max_ratio_threshold),
        verdict=VerdictSettings(max_dqe_loss=args.max_dqe_loss / 100.0))
    _check_output_folder(args.output, args.json, args.defects, args.defect_file, args.structure)
    reference = dark = None
    notes = []
    if args.gain:
        reference, reference_notes = read_gain_reference(args.gain)
        notes += [f"{args.gain}: {note}" for note in reference_notes]
    if args.dark:
        dark, dark_notes = read_image(args.dark)
        notes += [f"{args.dark}: {note}" for note in dark_notes]
    analysis = analyse(args.movies, reference=reference, dark=dark, settings=settings,
                       device=args.device, progress=Progress('estimate', quiet=args.quiet))
    outputs = AnalysisOutputs(gain=args.output, json=args.json, defect_labels=args.defects,
                              defect_file=args.defect_file, structure=args.structure)
    report = write_analysis(analysis, outputs, extra={
        'version': __version__, 'movies': [str(m) for m in args.movies],
        'gain_reference': args.gain, 'dark_reference': args.dark, 'output': str(args.output),
        'notes': notes + analysis.report['notes']})
    for note in report['notes']:
        print(f"note: {note}", file=sys.stderr)
    _print_analysis(report, args.output)
    return 0


def _print_analysis(report, output):
    kind = 'residual gain' if report['kind'] == 'residual' else 'gain'
    stats, ratios = report['statistics'], report['ratios']
    print(f"{kind} of {report['frames']} frames on {report['device']} in "
          f"{report['seconds']:.1f} s -> {output}")
    print(f"  mean {stats['mean']:.4f}  std {stats['std']:.4f}  p2.5 {stats['p2.5']:.4f}  "
          f"p97.5 {stats['p97.5']:.4f}  max {stats['max']:.4f}  "
          f"p97.5/p2.5 {ratios['p97.5/p2.5']:.4f}  max/p97.5 {ratios['max/p97.5']:.4f}")
    flagged = [name for name, on in report['flags'].items() if on]
    print(f"  paper's flags: {', '.join(flagged)}" if flagged else "  paper's flags: none raised")
    verdict = report['verdict']
    print(f"  verdict: {'FLAGGED' if verdict['flagged'] else 'ok'}: {verdict['sentence']}")


def _check_output_folder(*paths):
    from .io import InputError
    for path in paths:
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise InputError(f"{path}: output folder {folder} does not exist")


def _optional_commands():
    """Sub-commands that live in their own modules (orient, report)."""
    import importlib
    names = [f'{__package__}.{name}' for name in ('orient_command', 'report.command')]
    return [importlib.import_module(name) for name in names if _module_exists(name)]


def _module_exists(name):
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is not there
        return False


def build_parser():
    parser = argparse.ArgumentParser(
        prog='scipion-gain',
        description='Estimate and validate the gain of direct electron detectors from movies. '
                    'Gain maps written here MULTIPLY raw frames and have mean 1.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    subparsers = parser.add_subparsers(dest='command', required=True)
    add_estimate_parser(subparsers)
    for module in _optional_commands():
        module.add_parser(subparsers)
    return parser


def main(argv=None):
    from .estimator import DeviceError
    from .io import InputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, DeviceError) as exc:
        print(f"scipion-gain {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"scipion-gain {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
