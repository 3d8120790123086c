"""A fake protocol run folder made with the simulator and the estimator (report and viewer tests).

Residual mode, as the paper's Fig. 2: the first movies are corrected with the
right reference (flat residual, not flagged); from ``drift_at`` on, the
detector's columns have changed by a few per cent and the reference no longer
fits (flagged). Files follow the protocol contract: summary.txt,
summaryForMonitor.txt, warnings.txt, extra/movie_%06d_stats.json (with a
verdict), extra/movie_%06d_gain.mrc, _sum.mrc, _structure.mrc,
extra/defects_%06d.mrc (labels), extra/accumulated_gain.mrc,
extra/accumulated_stats.json, extra/accumulated_defects.mrc.
"""
from pathlib import Path

import numpy as np

from scipion_gain.estimator import EstimatorSettings, GainAccumulator, Thresholds
from scipion_gain.estimator.analysis import AnalysisSettings, analyse, analyse_accumulated
from scipion_gain.io import write_mrc
from scipion_gain.io.results import AnalysisOutputs, write_analysis
from scipion_gain.estimator.verdict import verdict_of
from scipion_gain.run_folder.logs import (monitor_line, movie_label, summary_column, summary_line,
                                          verdict_message)
from scipion_gain.simulate import simulate_gain, simulate_movie


def make_run_folder(root, n_movies=6, drift_at=4, shape=(96, 128), frames=6, dose=12.0, seed=7,
                    residual=True, verdicts='analysis'):
    """A run folder as the protocol writes it (io.results.write_analysis of each movie's
    analysis); movie ids 1..n_movies, movie files movies/movie_000.mrc ... (id = file
    number + 1, as Scipion numbers imported movies).

    ``verdicts``: 'analysis' keeps each analysis's own verdict; None removes it
    (files written before verdicts existed: the readers fall back on the
    assessment). Returns (root, ids of the movies the analyses flagged): the
    report tests compare what the report reads with those, and the drifted
    movies with the ids after ``drift_at``.
    """
    root = Path(root)
    extra = root / 'extra'
    extra.mkdir(parents=True, exist_ok=True)
    movies = root / 'movies'
    movies.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    true = simulate_gain(shape, rng, dead_pixels=6, hot_pixels=6, dead_column=True, broken_row=True)
    reference = true.correction if residual else None  # right for the first movies
    drifted = true.gain * (1 + 0.12 * rng.standard_normal(shape[1]))[None, :].astype(np.float32)
    settings = AnalysisSettings(estimator=EstimatorSettings(frame_step=1), thresholds=Thresholds())
    accumulator = GainAccumulator()
    summary, monitor, warnings = [], [], []
    flagged = []
    for index in range(n_movies):
        movie_id = index + 1
        drifted_now = index >= drift_at
        movie = simulate_movie(movies / f'movie_{index:03d}.mrc', shape, frames,
                               drifted if drifted_now else true.gain, dose=dose, rng=seed + index)
        analysis = analyse([movie], reference=reference, settings=settings)
        accumulator.add(analysis.result)
        if verdicts is None:
            analysis.report.pop('verdict', None)
        name = f'movie_{movie_id:06d}'
        report = write_analysis(analysis, AnalysisOutputs(
            gain=str(extra / f'{name}_gain.mrc'), json=str(extra / f'{name}_stats.json'),
            defect_labels=str(extra / f'defects_{movie_id:06d}.mrc'),
            defect_file=str(extra / f'defects_{movie_id:06d}.txt'),
            structure=str(extra / f'{name}_structure.mrc'),
            corrected_sum=str(extra / f'{name}_sum.mrc')), f'movie {movie_id}',
            extra={'movie_id': movie_id, 'movie_index': index, 'movie_file': str(movie)})
        label = movie_label(movie_id, report)
        summary.append(summary_line(label, report['statistics'], summary_column(report)))
        monitor.append(monitor_line(label, report['statistics']))
        if verdict_of(report).flagged:
            flagged.append(movie_id)
            warnings.append(verdict_message(movie_id, report) + '\n')
    accumulated = analyse_accumulated(accumulator, reference, settings)
    write_analysis(accumulated, AnalysisOutputs(
        gain=str(extra / 'accumulated_gain.mrc'), json=str(extra / 'accumulated_stats.json'),
        defect_labels=str(extra / 'accumulated_defects.mrc')), 'accumulated')
    if residual:
        write_mrc(extra / 'gain_reference.mrc', reference)
    (root / 'summary.txt').write_text(''.join(summary))
    (root / 'summaryForMonitor.txt').write_text(''.join(monitor))
    (root / 'warnings.txt').write_text(''.join(warnings))
    return root, flagged


_SHARED_RUN = {}


def shared_protocol_run():
    """One :func:`run_protocol` per test process (it takes about 30 s), under the
    conftest's temporary Scipion folder. Returns (project, protocol, gain file);
    the cwd is restored: chdir to ``project.getPath()`` before using the protocol."""
    import os
    if 'run' not in _SHARED_RUN:
        cwd = os.getcwd()
        folder = Path(os.environ['SCIPION_USER_DATA']).parent / 'report-protocol-run'
        try:
            _SHARED_RUN['run'] = run_protocol(folder) + (folder / 'gain.mrc',)
        finally:
            os.chdir(cwd)
    return _SHARED_RUN['run']


def run_protocol(folder, n_movies=4, drift_at=2, shape=(128, 128), frames=6, dose=12.0, seed=11):
    """A real GainProtMovieGain run in a fresh Scipion project, residual mode, batch.

    The movies carry the detector's right gain reference; from ``drift_at`` on
    they are recorded through a changed detector, so those residuals are
    flagged. Returns the finished protocol (the cwd is left in the project, as
    pyworkflow needs). Needs the conftest environment.
    """
    import os
    import time

    import pyworkflow.project as pwproj
    from pwem.protocols import ProtImportMovies
    from pyworkflow.plugin import Domain

    folder = Path(folder)
    movies = folder / 'movies'
    movies.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    true = simulate_gain(shape, rng, sector_spread=0.1, column_spread=0.05, row_spread=0.03,
                         flat_field=0.1, hot_pixels=4, dead_pixels=4)
    drifted = true.gain * (1 + 0.12 * rng.standard_normal(shape[1]))[None, :].astype(np.float32)
    for index in range(n_movies):
        tmp = movies / f'.tmp_movie_{index:03d}.mrc'
        simulate_movie(str(tmp), shape, frames, true.gain if index < drift_at else drifted,
                       dose=dose, rng=seed + index)
        os.replace(tmp, movies / f'movie_{index:03d}.mrc')
    gain_file = folder / 'gain.mrc'
    write_mrc(str(gain_file), true.correction)
    project = pwproj.Manager().createProject('gain_report_%d' % int(time.time() * 1000))
    os.chdir(project.getPath())
    imported = project.newProtocol(ProtImportMovies, filesPath=str(movies),
                                   filesPattern='movie_*.mrc', samplingRate=1.0,
                                   gainFile=str(gain_file))
    project.launchProtocol(imported, wait=True)
    assert imported.isFinished(), imported.getErrorMessage()
    protocol_class = Domain.findClass('GainProtMovieGain')
    prot = project.newProtocol(protocol_class, inputMovies=imported.outputMovies, useGpu=False,
                               movieStep=1)
    project.launchProtocol(prot, wait=True)
    assert prot.isFinished(), prot.getErrorMessage()
    return project, prot
