"""`scipion-gain orient`: which rotation, flip and inversion of a gain reference fits the movies.

    scipion-gain orient MOVIE [MOVIE ...] --gain REFERENCE -o ORIENTED.mrc [--json RESULT.json]

The movies' gain is estimated (by default the inverse per-pixel mean: its
pixel texture is what tells the flips apart; ``--method sme`` uses the paper's
estimator), the 8 rotations/flips of the reference, direct and inverted, are
compared with it (scipion_gain.estimator.orientation), and the reference is
written in the movies' orientation as a new file: a correction that
MULTIPLIES raw frames, mean 1. The input reference is never touched. The
transform is printed in MotionCor2 (-RotGain/-FlipGain) and RELION
(--gain_rot/--gain_flip) terms.

Exit status: 0 with a confident match; 1 with "no confident match" (nothing
written at -o unless --force); 2 on bad input (one line on stderr).
"""
from .. import __version__
from . import common

EXIT_NO_MATCH = 1


def add_parser(subparsers, parents=()):
    from ..estimator.orientation import MIN_SCORE, MIN_SIGNIFICANCE
    parser = subparsers.add_parser(
        'orient', parents=list(parents), help='find the rotation/flip/inversion of a gain reference that fits the movies',
        description='Estimate the gain of the movies, find which of the 8 rotations/flips of the '
                    'gain reference, as stored or inverted (1/x), agrees with it, and write the '
                    'reference in the movies\' orientation (a correction that multiplies raw '
                    'frames, mean 1). Prints the transform in MotionCor2 and RELION terms.')
    parser.add_argument('movies', nargs='+', metavar='MOVIE', help='movie files')
    parser.add_argument('--gain', required=True, metavar='REFERENCE',
                        help='experimental gain reference (MRC, TIFF, Falcon .gain, DM4)')
    parser.add_argument('-o', '--output', required=True, metavar='ORIENTED.mrc',
                        help='the reference in the movies\' orientation (new MRC file)')
    parser.add_argument('--json', metavar='RESULT.json', help='write the result as JSON')
    parser.add_argument('--gain-convention', choices=['auto', 'correction', 'counts'], default='auto',
                        help="how the reference is stored: 'correction' multiplies raw frames, "
                             "'counts' is reciprocal; 'auto' (default) takes the format's convention")
    parser.add_argument('--method', choices=['mean', 'sme', 'std'], default='mean',
                        help="estimate of the movies' gain: mean (inverse per-pixel mean, default), "
                             "sme (the paper), std (inverse per-pixel std)")
    parser.add_argument('--frame-step', type=common.positive_int, default=1, help='use every N-th frame')
    parser.add_argument('--eer-fraction', type=common.positive_int, default=None,
                        help='raw EER frames summed per frame (EER movies only; default 32)')
    parser.add_argument('--device', type=common.device, default='cpu',
                        help='cpu (default), gpu, gpu:N or auto')
    common.add_reading_options(parser)
    parser.add_argument('--min-score', type=common.finite_float(-1, what='min-score'),
                        default=MIN_SCORE, help=f'least correlation for a match (default {MIN_SCORE})')
    parser.add_argument('--min-significance', type=common.finite_float(0, what='min-significance'),
                        default=MIN_SIGNIFICANCE,
                        help='least lead over the runner-up, in chance spreads '
                             f'(default {MIN_SIGNIFICANCE})')
    parser.add_argument('--force', action='store_true',
                        help='write the best candidate even without a confident match')
    parser.add_argument('-q', '--quiet', action='store_true', help='no progress on stderr')
    parser.set_defaults(func=run_orient)
    return parser


def run_orient(args):
    from ..estimator import EstimatorSettings, estimate_gain
    from ..estimator.orientation import apply_orientation, find_orientation
    from ..io import (InputError, format_conventions, read_gain_reference, reader_class, reading,
                      write_mrc)

    common.check_outputs({'-o': args.output, '--json': args.json},
                         [('gain reference', args.gain)] + [('movie', m) for m in args.movies])
    reference, reference_notes = read_gain_reference(args.gain, convention=args.gain_convention)
    notes = [f"{args.gain}: {note}" for note in reference_notes]
    settings = EstimatorSettings(method=args.method, frame_step=args.frame_step)
    with reading(strict=args.strict, eer_fraction=args.eer_fraction):
        result = estimate_gain(list(args.movies), settings, device=args.device,
                               progress=common.Progress('orient', quiet=args.quiet))
    notes += list(getattr(result, 'notes', []) or [])
    try:
        found = find_orientation(result.gain, reference, valid=~result.defects,
                                 min_score=args.min_score, min_significance=args.min_significance)
    except ValueError as exc:
        raise InputError(f"{args.gain}: {exc}") from None
    notes += found.notes
    written = None
    if found.confident or args.force:
        oriented = apply_orientation(reference, found)
        label = "scipion-gain oriented reference: multiplies raw frames, mean 1"
        write_mrc(args.output, oriented, label=label)
        written = str(args.output)
    report = {
        'version': __version__,
        'movies': [str(m) for m in args.movies],
        'gain_reference': str(args.gain),
        'output': written,
        'frames': int(result.frames),
        'method': args.method,
        'device': result.device,
        'conventions': {
            'reference': format_conventions(reader_class(args.gain)),
            'movies': format_conventions(reader_class(args.movies[0])),
            'gain_convention_used': args.gain_convention,
        },
        'orientation': found.to_dict(),
        'notes': notes,
    }
    if args.json:
        common.write_json(args.json, report)
    common.print_notes(notes)
    _print_result(args, result, found, written)
    return 0 if found.confident else EXIT_NO_MATCH


def _print_result(args, result, found, written):
    movies = len(args.movies)
    print(f"orientation of {args.gain} against {result.frames} frames of {movies} "
          f"movie{'s' if movies != 1 else ''} (estimate: {args.method}, {result.device})")
    t = found.transform
    if not found.confident:
        print(f"  {found.message}")
        if written:
            print(f"  best candidate written anyway (--force) -> {written}")
        else:
            print(f"  nothing written to {args.output}")
        return
    print(f"  {found.message}")
    print(f"  MotionCor2: {t.motioncor2}    RELION: {t.relion}")
    if found.inverted:
        print("  the reference is stored inverted (1/x): MotionCor2 and RELION have no option "
              "for that; use the written file")
    print(f"  oriented reference -> {written} (multiplies raw frames, mean 1; with it: "
          f"-RotGain 0 -FlipGain 0 / --gain_rot 0 --gain_flip 0)")
