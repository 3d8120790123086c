"""The orientation case at full size (1024 x 1024), through the `scipion-gain orient` command.

Simulated counting movie: 1024 x 1024, 30 frames, 1.5 e/px/frame, a gain with
readout sectors, column and row factors, a flat field, pixel scatter, dead and
hot pixels. The reference (the true correction) is stored in each of the 8
rotations/flips, as it is and inverted (1/x); the command must name the
transform that brings it back, and must answer "no confident match" for the
reference of another detector. Prints one line per case and a summary; exit
status 1 if any case is wrong.

    .venv/bin/python benchmarks/orientation.py [--size 1024] [--frames 30] [--dose 1.5] [--method mean]
"""
import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

import mrcfile
import numpy as np

from scipion_gain.cli import main as cli_main
from scipion_gain.estimator.orientation import TRANSFORMS
from scipion_gain.simulate import simulate_gain, simulate_movie


def gain_of(shape, seed):
    return simulate_gain(shape, rng=seed, sectors=4, sector_spread=0.06, column_spread=0.03,
                         row_spread=0.02, flat_field=0.05, pixel_scatter=0.03, dead_pixels=50,
                         hot_pixels=50, dead_column=True)


def stored_as(truth, transform, inverted):
    for candidate in TRANSFORMS:
        if np.array_equal(transform.apply(candidate.apply(truth)), truth):
            stored = candidate.apply(truth)
            return (1.0 / stored) if inverted else stored


def orient(movie, reference, folder, method):
    ref_path = os.path.join(folder, 'reference.mrc')
    with mrcfile.new(ref_path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(reference, dtype=np.float32))
    out, result = os.path.join(folder, 'oriented.mrc'), os.path.join(folder, 'result.json')
    for path in (out, result):
        if os.path.exists(path):
            os.remove(path)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = cli_main(['orient', movie, '--gain', ref_path, '-o', out, '--json', result,
                           '--method', method, '-q'])
    seconds = time.perf_counter() - started
    with open(result) as handle:
        data = json.load(handle)
    oriented = None
    if os.path.exists(out):
        with mrcfile.open(out) as mrc:
            oriented = mrc.data.copy()
    return status, data['orientation'], oriented, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=1024)
    parser.add_argument('--frames', type=int, default=30)
    parser.add_argument('--dose', type=float, default=1.5)
    parser.add_argument('--method', default='mean', choices=['mean', 'sme', 'std'])
    parser.add_argument('--mode', default='counting', choices=['counting', 'integrating'])
    args = parser.parse_args(argv)
    shape = (args.size, args.size)
    gain = gain_of(shape, 21)
    truth = gain.correction
    good = ~(gain.dead | gain.hot)
    wrong = 0
    with tempfile.TemporaryDirectory() as folder:
        movie = os.path.join(folder, 'movie.mrc')
        simulate_movie(movie, shape, args.frames, gain.gain, dose=args.dose, mode=args.mode, rng=3)
        print(f"{args.mode} movie {args.size} x {args.size}, {args.frames} frames, {args.dose} e/px/frame; "
              f"estimate: {args.method}")
        for transform in TRANSFORMS:
            for inverted in (False, True):
                status, found, oriented, seconds = orient(
                    movie, stored_as(truth, transform, inverted), folder, args.method)
                got = (found['transform']['rotation'], found['transform']['flip'], found['inverted'])
                right = (status == 0 and found['confident']
                         and got == (transform.rotation, transform.flip, inverted))
                if right:
                    error = float(np.abs(oriented[good] - truth[good] / truth[good].mean()).max())
                    right = error < 1e-3
                wrong += not right
                print(f"  stored so that {transform.motioncor2} brings it back, "
                      f"{'inverted' if inverted else 'direct  '}: found {found['transform']['motioncor2']}"
                      f"{' inverted' if found['inverted'] else ''}, r={found['score']:.3f}, "
                      f"runner-up {found['second_score']:.3f}, chance {found['null']:.4f}, "
                      f"significance {found['significance']:.1f}, {seconds:.1f} s: "
                      f"{'OK' if right else 'WRONG'}")
        other = gain_of(shape, 99).correction
        status, found, oriented, seconds = orient(movie, other, folder, args.method)
        unrelated_ok = status == 1 and not found['confident'] and oriented is None
        wrong += not unrelated_ok
        print(f"  unrelated reference: {found['message']}, exit {status}: "
              f"{'OK' if unrelated_ok else 'WRONG'}")
    print(f"{17 - wrong}/17 cases right")
    return 1 if wrong else 0


if __name__ == '__main__':
    sys.exit(main())
