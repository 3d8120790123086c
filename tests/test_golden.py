"""Golden analyses: the JSON of small fixed-seed cases, recorded, so that a change of behaviour shows.

Each case simulates a movie (256 x 256, a few frames, fixed seeds) through one
detector and runs the public analysis (``analyse`` / ``analyse_accumulated``)
on it; its JSON (the paper's statistics, the defects, the assessment's
components, the verdict with its DQE loss and sentence, the notes, the input
report) is compared with ``tests/golden/<case>.json``.

Numbers are compared to a relative tolerance of ``RTOL`` (and ``ATOL`` near
zero); everything else (verdicts, flags, which component was found, counts,
sentences, notes) exactly. The run's time (``seconds``) is left out.

A change that is MEANT to change these numbers regenerates the files:

    SCIPION_GAIN_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

and says in its commit message why the goldens moved (``git diff tests/golden``
shows what moved). A refactor must pass without regenerating.
"""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from scipion_gain.estimator import GainAccumulator
from scipion_gain.estimator.analysis import analyse, analyse_accumulated
from scipion_gain.simulate import (Specimen, simulate_frames, simulate_gain, simulate_movie,
                                   write_movie, wrong_reference)

GOLDEN = Path(__file__).resolve().parent / 'golden'
UPDATE = bool(os.environ.get('SCIPION_GAIN_UPDATE_GOLDEN'))

# The maps are float32 and most statistics sum tens of thousands of pixels: a
# refactor that only reorders arithmetic (another filter implementation, sums
# taken in another order) moves a result by a few float32 ulps (~1e-7) per
# operation, which chains of operations amplify to ~1e-6. 1e-4 stays well above
# that and far below anything a reader would call a change (verdicts and
# sentences print two or three significant digits, and are compared exactly).
RTOL = 1e-4
ATOL = 1e-7
#: what differs between two runs of the same analysis
VOLATILE = {'seconds'}

SHAPE = (256, 256)
FRAMES = 8
SPECIMEN = Specimen(ice=0.05, particle_density=0.1, carbon=0.3, carbon_angle=30,
                    carbon_transmission=0.6)


@pytest.fixture(scope='module')
def detector():
    return simulate_gain(SHAPE, rng=21, sectors=4, sector_spread=0.06, column_spread=0.03,
                         row_spread=0.02, flat_field=0.05, pixel_scatter=0.02)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp('golden')


def movie(folder, detector, name, frames=FRAMES, **options):
    settings = dict(dose=2.0, rng=9, specimen=SPECIMEN)
    settings.update(options)
    return str(simulate_movie(str(folder / name), SHAPE, frames, detector.gain, **settings))


def column_error(detector, seed=4, size=0.03):
    """A reference off by a 3 % column pattern (what the residual should find)."""
    return wrong_reference(detector.correction, 'columns', rng=seed, size=size).reference


# ------------------------------------------------------------------ the cases
def gain_mode(folder, detector):
    """Raw counting frames, no reference: the detector's own structure is judged."""
    return analyse([movie(folder, detector, 'raw.mrc')]).to_json()


def residual_exact(folder, detector):
    """Raw frames with the exact reference: nothing beyond noise."""
    return analyse([movie(folder, detector, 'raw.mrc')],
                   reference=detector.correction).to_json()


def residual_wrong(folder, detector):
    """Raw frames with a reference off by a column pattern: flagged, with its DQE loss."""
    return analyse([movie(folder, detector, 'raw.mrc')],
                   reference=column_error(detector)).to_json()


def pre_corrected(folder, detector):
    """Float32 frames gain-corrected at acquisition by a wrong reference (lattice path)."""
    path = movie(folder, detector, 'pre.mrc', correction=column_error(detector),
                 output='float32')
    return analyse([path]).to_json()


def integrating(folder, detector):
    """Integrating-camera frames (ADU, gamma-spread deposits, read noise)."""
    return analyse([movie(folder, detector, 'integrating.mrc', mode='integrating',
                          rng=11)]).to_json()


def summed_micrograph(folder, detector):
    """One gain-normalised summed micrograph (float32), corrected by a wrong reference."""
    frames = simulate_frames(SHAPE, FRAMES, detector.gain, dose=2.0, rng=13, specimen=SPECIMEN,
                             summed=True, correction=column_error(detector))
    path = folder / 'summed.mrc'
    write_movie(path, np.stack(list(frames)))
    return analyse([str(path)]).to_json()


def nan_patch(folder, detector):
    """Raw frames with a NaN patch in one frame, judged against the exact reference."""
    path = movie(folder, detector, 'nan.mrc', rng=15,
                 spoil={'nan_patches': 1, 'patch_size': 5})
    return analyse([path], reference=detector.correction).to_json()


def session(folder, detector):
    """Six movies of different specimens through one wrong reference, accumulated."""
    reference = column_error(detector, seed=6, size=0.01)
    rng = np.random.default_rng(8)
    accumulator = GainAccumulator()
    per_movie = []
    for index in range(6):
        specimen = Specimen(ice=0.05, ice_angle=float(rng.uniform(0, 360)),
                            particle_density=0.2, carbon=0.25 if index % 2 else 0.0,
                            carbon_angle=float(rng.uniform(0, 360)))
        path = movie(folder, detector, f'session_{index}.mrc', frames=6, rng=100 + index,
                     specimen=specimen)
        analysis = analyse([path], reference=reference)
        per_movie.append(analysis.verdict)
        accumulator.add(analysis.result, member=index + 1)
    return {'movies': per_movie,
            'accumulated': analyse_accumulated(accumulator, reference).to_json()}


CASES = {case.__name__: case for case in (gain_mode, residual_exact, residual_wrong,
                                          pre_corrected, integrating, summed_micrograph,
                                          nan_patch, session)}


# ------------------------------------------------------------------ comparison
def stable(value):
    """The JSON without what differs between runs, as json.dump would write it."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return [stable(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def differences(got, want, where='$'):
    """Where ``got`` differs from ``want``: numbers beyond RTOL/ATOL, anything else at all."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}: keys {sorted(set(got) ^ set(want))} only on one side"] \
            if set(got) != set(want) else []
        for key in sorted(set(got) & set(want)):
            out += differences(got[key], want[key], f"{where}.{key}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, golden {len(want)}"]
        return [d for k, (g, w) in enumerate(zip(got, want))
                for d in differences(g, w, f"{where}[{k}]")]
    numbers = (int, float)
    if (isinstance(want, float) and isinstance(got, numbers) and not isinstance(got, bool)
            and not isinstance(want, bool)):
        if math.isnan(want) and math.isnan(got):
            return []
        if math.isclose(got, want, rel_tol=RTOL, abs_tol=ATOL):
            return []
        return [f"{where}: {got!r}, golden {want!r}"]
    if type(got) is not type(want) or got != want:
        return [f"{where}: {got!r}, golden {want!r}"]
    return []


def test_the_comparison_sees_a_number_beyond_its_tolerance_and_any_other_change():
    want = {'z': 7.0, 'found': True, 'reasons': ['column pattern 3.00 %'], 'loss': 0.0}
    assert differences(dict(want, z=7.0 * (1 + RTOL / 2)), want) == []
    assert differences(dict(want, z=7.0 * (1 + 2 * RTOL)), want) == [
        f"$.z: {7.0 * (1 + 2 * RTOL)!r}, golden 7.0"]
    assert differences(dict(want, found=False), want) == ["$.found: False, golden True"]
    assert differences(dict(want, reasons=[]), want) == ["$.reasons: 0 items, golden 1"]
    assert differences(dict(want, loss=1e-3), want) == ["$.loss: 0.001, golden 0.0"]
    assert differences({'z': 7.0}, want)[0].startswith("$: keys")


@pytest.mark.parametrize('name', list(CASES))
def test_the_analysis_of_a_fixed_case_is_the_recorded_one(name, folder, detector):
    got = json.loads(json.dumps(stable(CASES[name](folder, detector))))
    path = GOLDEN / f'{name}.json'
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + '\n')
        pytest.skip(f"golden {path.name} written")
    assert path.exists(), f"no golden {path}: run with SCIPION_GAIN_UPDATE_GOLDEN=1"
    found = differences(got, json.loads(path.read_text()))
    assert not found, '\n'.join([f"{name} differs from {path.name}:"] + found[:40])
