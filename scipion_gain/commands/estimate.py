"""`scipion-gain estimate MOVIE... -o GAIN.mrc`: the gain (or residual gain) of movies.

Every gain map it writes MULTIPLIES raw frames, has mean 1 and holds no NaN or
inf. Bad input ends the run with one line on stderr and exit status 2; nothing
half-written is left at an output path (see :mod:`.common`).
"""
from .. import __version__
from . import common


def add_parser(subparsers, parents=()):
    parser = subparsers.add_parser(
        'estimate', parents=list(parents), help='estimate the gain (or residual gain) of movies',
        description='Estimate the gain of a direct electron detector from movies '
                    '(Sorzano et al. 2018). The map written MULTIPLIES raw frames and has mean 1. '
                    'With --gain, frames are first multiplied by that reference and the result is '
                    'the residual gain, flat (all 1) when the reference is right. Movies '
                    'gain-corrected at acquisition (float frames: counts times the applied '
                    'factors) are recognised: the estimate is then the residual of the applied '
                    'reference, recovered from the frames (see --applied-reference).')
    parser.add_argument('movies', nargs='+', metavar='MOVIE', help='movie files (all frames of all movies give one estimate)')
    parser.add_argument('-o', '--output', required=True, metavar='GAIN.mrc', help='output gain map (MRC, float32)')
    parser.add_argument('--gain', metavar='REFERENCE', help='gain reference that multiplies raw frames: estimate the residual gain')
    parser.add_argument('--gain-convention', choices=['auto', 'correction', 'counts'], default='auto',
                        help="how the reference is stored: 'correction' multiplies raw frames, "
                             "'counts' is reciprocal; 'auto' (default) takes the format's convention")
    parser.add_argument('--json', metavar='STATS.json', help='write statistics and flags as JSON')
    parser.add_argument('--method', choices=['robust', 'sme', 'mean', 'std'], default='robust',
                        help='robust (default): the paper\'s row and column equalization on the '
                             'movie sum with the specimen (carbon, gold, holes, ice) divided out '
                             'first; sme: the paper as published (every frame equalized; a '
                             'specimen edge becomes stripes of the map); mean, std: baselines '
                             '(inverse per-pixel mean / std)')
    parser.add_argument('--reference', choices=['single', 'local'], default='single',
                        help='single: one reference histogram (Eq. 3, default); local: per line')
    parser.add_argument('--sigma', type=common.sigma, default='auto',
                        help="'auto' (search 0..3 step 0.5, default) or a value >= 0")
    parser.add_argument('--iterations', type=common.positive_int, default=1, help='Eq. 7 iterations at most (default 1)')
    parser.add_argument('--tolerance', type=common.finite_float(0, strictly=True, what='tolerance'),
                        default=1e-3, help='stop iterating when the relative change is below (default 1e-3)')
    parser.add_argument('--frame-step', type=common.positive_int, default=1,
                        help='use every N-th frame (default 1: every frame; the Scipion '
                             'protocol uses 20 frames spread over each movie by default)')
    parser.add_argument('--device', type=common.device, default='cpu', help='cpu (default), gpu, gpu:N or auto')
    common.add_reading_options(parser)
    parser.add_argument('--dark', metavar='DARK.mrc',
                        help='dark reference subtracted from every frame first (integrating cameras: '
                             'corrected = (raw - dark) x gain)')
    parser.add_argument('--adu-per-electron', type=common.finite_float(0, strictly=True,
                                                                      what='adu-per-electron'),
                        metavar='ADU', help="the camera's stated conversion factor (integrating "
                                            "cameras, e.g. 300 for a DE Celeritas), compared with "
                                            "the one photon transfer measures")
    parser.add_argument('--defects', metavar='LABELS.mrc',
                        help='also write the defect label image (0 good, 1 dead, 2 hot, 3/4 dead/broken '
                             'row, 5/6 dead/broken column, 7 unusable)')
    parser.add_argument('--defect-file', metavar='DEFECTS.txt',
                        help='also write the defects as a MotionCor2 -DefectFile (x y w h per line)')
    parser.add_argument('--applied-reference', metavar='APPLIED.mrc',
                        help='for movies gain-corrected at acquisition (float frames that are '
                             'whole counts times a per-pixel factor): also write the reference '
                             'that was applied, recovered from the frames (multiplies raw frames, '
                             'mean 1); nothing is written for other movies (a note says why)')
    parser.add_argument('--structure', metavar='MODEL.mrc',
                        help='also write the structure model: the map without its estimation noise '
                             '(the column and row patterns found; multiplies raw frames, mean 1)')
    common.add_judging_options(parser, dqe_loss_may_be_zero=True)
    parser.add_argument('-q', '--quiet', action='store_true', help='no progress on stderr')
    parser.set_defaults(func=run_estimate)
    return parser


def check_paths(args):
    """The outputs of an estimate against its inputs and each other (before any work)."""
    common.check_outputs(
        {'-o': args.output, '--json': args.json, '--defects': args.defects,
         '--defect-file': args.defect_file, '--structure': args.structure,
         '--applied-reference': args.applied_reference},
        [('movie', m) for m in args.movies]
        + [('gain reference', args.gain), ('dark reference', args.dark)])


def run_estimate(args):
    from ..estimator import EstimatorSettings
    from ..estimator.analysis import AnalysisSettings, analyse
    from ..estimator.stages.integrating import IntegratingSettings
    from ..io import read_dark_reference, read_gain_reference, reading
    from ..io.results import AnalysisOutputs, write_analysis

    check_paths(args)
    thresholds, verdict = common.judging_settings(args)
    settings = AnalysisSettings(
        estimator=EstimatorSettings(method=args.method, reference=args.reference,
                                    sigma=args.sigma, iterations=args.iterations,
                                    tolerance=args.tolerance, frame_step=args.frame_step),
        thresholds=thresholds, verdict=verdict,
        integrating=IntegratingSettings(stated_adu_per_electron=args.adu_per_electron))
    reference = dark = None
    notes = []
    if args.gain:
        reference, reference_notes = read_gain_reference(args.gain, convention=args.gain_convention)
        notes += [f"{args.gain}: {note}" for note in reference_notes]
    if args.dark:
        dark = read_dark_reference(args.dark)
        notes += [f"{args.dark}: {note}" for note in dark.notes]
    with reading(strict=args.strict):
        # one estimate, added to no session: its session sums are not kept through the judging
        analysis = analyse(args.movies, reference=reference, dark=dark, settings=settings,
                           device=args.device, progress=common.Progress(
                               'estimate', quiet=args.quiet,
                               then='every frame read; estimating the map and judging it'),
                           keep_sums=False)
    outputs = AnalysisOutputs(gain=args.output, json=args.json, defect_labels=args.defects,
                              defect_file=args.defect_file, structure=args.structure,
                              applied_reference=args.applied_reference)
    if args.applied_reference and analysis.applied_reference is None:
        lattice = (analysis.report.get('input') or {}).get('lattice') or {}
        notes.append(f"--applied-reference {args.applied_reference} not written: the frames "
                     f"were not gain-corrected at acquisition ({lattice.get('why') or 'no lattice'})")
    report = write_analysis(analysis, outputs, extra={
        'version': __version__, 'movies': [str(m) for m in args.movies],
        'gain_reference': args.gain, 'dark_reference': args.dark, 'output': str(args.output),
        'notes': notes + analysis.report['notes']})
    common.print_notes(report['notes'])
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
    lattice = (report.get('input') or {}).get('lattice') or {}
    if lattice.get('path') == 'lattice':
        where = lattice.get('applied_reference')
        print(f"  frames gain-corrected at acquisition ({lattice.get('precision')}): residual of "
              f"the applied reference, recovered from the frames"
              + (f" -> {where}" if where else ''))
        given = lattice.get('given_reference')
        if given:
            print(f"  {given['sentence']}")
    dark = (report.get('input') or {}).get('dark')
    if dark:
        print(f"  dark reference subtracted: {dark.get('path') or 'given'} "
              f"(mean {dark['mean']:.4g} ADU)")
    flagged = [name for name, on in report['flags'].items() if on]
    print(f"  paper's flags: {', '.join(flagged)}" if flagged else "  paper's flags: none raised")
    from ..estimator.verdict import verdict_of
    verdict = verdict_of(report)
    print(f"  verdict: {common.verdict_words(verdict)}")
