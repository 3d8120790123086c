"""A fake protocol run folder made with the simulator and the estimator (report and viewer tests).

Residual mode, as the paper's Fig. 2: the first movies are corrected with the
right reference (flat residual, not flagged); from ``drift_at`` on, the
detector's columns have changed by a few per cent and the reference no longer
fits (flagged). Files follow the protocol contract: summary.txt,
summaryForMonitor.txt, warnings.txt, extra/movie_%06d_stats.json,
extra/movie_%06d_gain.mrc, extra/defects_%06d.mrc, extra/accumulated_gain.mrc,
extra/accumulated_stats.json.
"""
import json
from pathlib import Path

import numpy as np

from scipion_gain.estimator import EstimatorSettings, GainAccumulator, Thresholds, estimate_gain
from scipion_gain.estimator.statistics import map_statistics
from scipion_gain.io import write_mrc
from scipion_gain.simulate import correction_of, simulate_gain, simulate_movie


def make_run_folder(root, n_movies=6, drift_at=4, shape=(96, 128), frames=6, dose=12.0, seed=7,
                    residual=True):
    root = Path(root)
    extra = root / 'extra'
    extra.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    true = simulate_gain(shape, rng, dead_pixels=6, hot_pixels=6, dead_column=True, broken_row=True)
    reference = true.correction  # right for the first movies
    drifted = true.gain * (1 + 0.12 * rng.standard_normal(shape[1]))[None, :].astype(np.float32)
    settings = EstimatorSettings(frame_step=1)
    thresholds = Thresholds()
    accumulator = GainAccumulator()
    summary, monitor, warnings = [], [], []
    flagged = []
    for index in range(n_movies):
        movie_id = index + 1
        gain_now = true.gain if index < drift_at else drifted
        movie = simulate_movie(root / f'movie_{movie_id:06d}.mrc', shape, frames, gain_now,
                               dose=dose, rng=seed + index)
        result = estimate_gain([movie], settings, gain_reference=reference if residual else None)
        accumulator.add(result)
        report = result.report(thresholds)
        report.update({'movie_id': movie_id, 'movie_index': index, 'kind': 'residual' if residual else 'gain',
                       'movie_file': str(movie)})
        (extra / f'movie_{movie_id:06d}_stats.json').write_text(json.dumps(report, indent=1))
        write_mrc(extra / f'movie_{movie_id:06d}_gain.mrc', result.gain)
        write_mrc(extra / f'defects_{movie_id:06d}.mrc', result.defects.astype(np.float32))
        s = report['statistics']
        label = f"movie_{movie_id:06d}_{'residual' if residual else 'gain'}"
        summary.append(f"{label}: mean={s['mean']:f} std={s['std']:f} "
                       f"[min={s['min']:f},max={s['max']:f}] 2.5%={s['p2.5']:f} 25%={s['p25']:f} "
                       f"50%={s['p50']:f} 75%={s['p75']:f} 97.5%={s['p97.5']:f}")
        monitor.append(f"{label}: {s['std']:f} {s['p2.5']:f} {s['p97.5']:f} {s['max']:f}")
        if report['flagged']:
            flagged.append(index)
            warnings.append(f"movie {movie_id}: residual gain flagged "
                            f"({', '.join(k for k, v in report['flags'].items() if v)})")
    write_mrc(extra / 'accumulated_gain.mrc', accumulator.gain)
    good = ~accumulator.defects
    (extra / 'accumulated_stats.json').write_text(json.dumps(
        map_statistics(accumulator.gain, thresholds, mask=good if good.any() else None)))
    (root / 'summary.txt').write_text('\n'.join(summary) + '\n')
    (root / 'summaryForMonitor.txt').write_text('\n'.join(monitor) + '\n')
    (root / 'warnings.txt').write_text('\n'.join(warnings) + ('\n' if warnings else ''))
    return root, flagged
