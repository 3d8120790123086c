"""How the verdict depends on the frames used per movie and the movies analysed.

The protocol analyses every ``frameStep``-th frame of every ``movieStep``-th
movie. Fewer frames cost less time, but the verdict judges the SUM of the
frames used (``estimator.assessment`` on the corrected sum, the DQE loss of
``estimator.verdict`` at the dose of that sum), so fewer frames are also
fewer electrons. This script measures both sides on the simulated sessions of
``benchmarks/accuracy.py`` (the same detector, specimens, references and
``judge()``, only the analysis' frame step set):

* per frame step: false alarms with the exact reference, detection of a 2 %
  column pattern, a 3 % sector step and a reference rotated by 180 degrees,
  and the seconds per movie (the analysis' wall time, reading included, and
  the estimator's share of it). Besides the verdict as the code gives it
  ("flagged"), the table says how many would be flagged if the DQE loss were
  taken at the movie's full dose (all its frames) rather than at the dose of
  the frames used ("at full dose");
* per movie step: a reference that goes wrong at movie K (``--drift-at``;
  exact before, the ``--drift-case`` error from K on) over the session's
  movies in order: the first analysed movie >= K, the first movie whose
  verdict is flagged from K on, how many movies late that is, the false
  alarms among the analysed movies before K, and when the running estimate
  (the accumulated sums of the analysed movies, analysis.analyse_accumulated,
  as the protocol's ``accumulate``) is first flagged. Analysed movies follow
  the protocol's rule: positions 0, M, 2M, ... and the last one.

    python benchmarks/frames_needed.py                                  # 1024^2, 40 and 20 frames
    python benchmarks/frames_needed.py --sizes 4096 --frames 40 --movies 2 --cases exact,sector \\
        --no-drift                                                      # the 4096^2 spot check
    python benchmarks/frames_needed.py --table run.json                 # a saved run's tables again

Times are of this machine while it runs: say its load (printed) with them.
"""
import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np

from accuracy import (CASES, SEED_SETS, Session, judge, publish, seeds,
                      simulate_session_movies)
from scipion_gain.estimator import EstimatorSettings, GainAccumulator
from scipion_gain.estimator.analysis import AnalysisSettings, analyse_accumulated
from scipion_gain.estimator.verdict import VerdictSettings, dqe_loss
from scipion_gain.simulate import session_references

DEFAULT_CASES = ('exact', 'columns', 'sector', 'rot180')
WORDS = {'exact': 'exact: false alarms', 'columns': 'columns 2 %', 'sector': 'sector 3 %',
         'rot180': 'rot180', 'rot90': 'rot90', 'part_frame': 'part frame'}


def analysed_positions(count, movie_step):
    """The protocol's rule (GainProtMovieGain._isAnalysed on a closed set): positions
    0, M, 2M, ... in arrival order, and the last movie."""
    return [p for p in range(count) if p % movie_step == 0 or p == count - 1]


def judged_movie(path, reference, step, total_frames, verdict_settings):
    """One movie judged with frame step ``step``: the verdict, its loss at the full
    dose, and the seconds (wall, estimator)."""
    settings = AnalysisSettings(estimator=EstimatorSettings(frame_step=step),
                                verdict=verdict_settings)
    started = time.perf_counter()
    judged = judge([path], reference, settings=settings)
    wall = time.perf_counter() - started
    result = judged['result']
    used = int(result.frames)
    electrons = getattr(result, 'electrons', None)   # per pixel, over the frames used
    loss = judged['dqe_loss']
    # the verdict's loss is 1 - 1 / (1 + N s^2) at N = electrons of the frames used: s^2 from
    # it, and the same structure at the movie's full dose (all its frames)
    variance = (loss / (1.0 - loss) / electrons
                if loss is not None and electrons and loss < 1 else 0.0)
    rms = float(np.sqrt(variance))
    full = (None if not electrons else
            dqe_loss(electrons * total_frames / max(used, 1), variance))
    flagged_full = bool(variance > 0 and full is not None
                        and full >= verdict_settings.max_dqe_loss)
    record = {'flagged': judged['flagged'], 'reasons': judged['reasons'],
              'paper_flagged': judged['paper_flagged'], 'frames_used': used,
              'electrons': electrons, 'pattern_rms': rms, 'dqe_loss': loss,
              'dqe_loss_full_dose': full, 'flagged_full_dose': flagged_full,
              'wall_s': round(wall, 3), 'estimator_s': round(float(result.seconds), 3)}
    return record, result


def run_session(session, base, cases, steps, drift, verdict_settings, log):
    """Simulate one session; judge every movie with every reference and frame step."""
    started = time.time()
    load = os.getloadavg()[0]
    folder = tempfile.mkdtemp(prefix='gain_frames_')
    record = {'session': asdict(session), 'label': session.label(), 'steps': list(steps),
              'cases': list(cases), 'movies': [], 'load_start': round(load, 2)}
    try:
        gain, gain_options, movies = simulate_session_movies(session, base, folder)
        record['gain'] = gain_options
        log(f"# {session.label()}: simulated in {time.time() - started:.0f} s")
        references = {case: session_references(gain.correction, case, session.movies,
                                                rng=seeds(base, *session.key(), 2,
                                                          CASES.index(case)))[0]
                      for case in set(cases) | ({drift['case'], 'exact'} if drift else set())}
        accumulators, running = {}, {}
        if drift:
            for step in steps:
                for movie_step in drift['movie_steps']:
                    accumulators[step, movie_step] = GainAccumulator()
                    running[f"{step},{movie_step}"] = []
            analysed = {m: set(analysed_positions(session.movies, m))
                        for m in drift['movie_steps']}
        for position, movie in enumerate(movies):
            entry = {'movie': movie['movie'], 'kind': movie['kind'], 'cases': {}}
            for case in sorted(references, key=CASES.index):
                entry['cases'][case] = {}
                for step in steps:
                    judged, result = judged_movie(movie['path'], references[case].reference,
                                                  step, session.frames, verdict_settings)
                    entry['cases'][case][str(step)] = judged
                    if not drift:
                        continue
                    wanted = drift['case'] if movie['movie'] >= drift['at'] else 'exact'
                    if case != wanted:
                        continue
                    for movie_step in drift['movie_steps']:
                        if position not in analysed[movie_step]:
                            continue
                        accumulator = accumulators[step, movie_step]
                        accumulator.add(result, member=movie['movie'])
                        if accumulator.count < 2:
                            continue
                        report = analyse_accumulated(
                            accumulator, references[case].reference,
                            AnalysisSettings(verdict=verdict_settings)).to_json()
                        running[f"{step},{movie_step}"].append(
                            {'movie': movie['movie'], 'flagged': report['verdict']['flagged'],
                             'dqe_loss': report['verdict']['dqe_loss']})
            record['movies'].append(entry)
            log(f"#   movie {movie['movie']} done after {time.time() - started:.0f} s "
                f"(load {os.getloadavg()[0]:.1f})")
        if drift:
            record['drift'] = dict(drift, running=running)
    finally:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)
    record['load_end'] = round(os.getloadavg()[0], 2)
    record['seconds'] = round(time.time() - started, 1)
    return record


# ------------------------------------------------------------------ tables
def _cell(record, case, step, key):
    values = [m['cases'][case][str(step)][key] for m in record['movies']
              if case in m['cases']]
    return sum(bool(v) for v in values), len(values)


def _median(record, case, step, key):
    values = [m['cases'][case][str(step)][key] for m in record['movies']
              if case in m['cases'] and m['cases'][case][str(step)][key] is not None]
    return float(np.median(values)) if values else None


def session_table(record):
    session = Session(**record['session'])
    cases = [c for c in record['cases']]
    lines = [f"#### {record['label']}", '',
             f"Load average {record['load_start']} at the start, {record['load_end']} at the "
             f"end; {record['seconds']:.0f} s.", '',
             'Flagged / movies (the verdict as the code gives it; in brackets: if its DQE loss '
             'were taken at the full dose of the movie, all its frames).', '']
    header = (['frame step', 'frames used', 'e/px used'] + [WORDS.get(c, c) for c in cases]
              + ['s/movie', 'estimator s', 'estimator share'])
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for step in record['steps']:
        used = len(range(0, session.frames, step))
        row = [str(step), str(used), f"{used * session.dose:g}"]
        for case in cases:
            n, total = _cell(record, case, step, 'flagged')
            f, _ = _cell(record, case, step, 'flagged_full_dose')
            row.append(f"{n}/{total} ({f}/{total})")
        wall = _median(record, cases[0], step, 'wall_s')
        est = _median(record, cases[0], step, 'estimator_s')
        row += [f"{wall:.2f}", f"{est:.2f}", f"{100 * est / wall:.0f} %"]
        lines.append('| ' + ' | '.join(row) + ' |')
    lines.append('')
    lossy = [c for c in cases if c != 'exact']
    if lossy:
        lines += ['Median DQE loss the verdict reports (at the dose of the frames used) and '
                  'at the movie\'s full dose:', '',
                  '| frame step | ' + ' | '.join(WORDS.get(c, c) for c in lossy) + ' |',
                  '|---|' + '---|' * len(lossy)]
        for step in record['steps']:
            row = [str(step)]
            for case in lossy:
                used = _median(record, case, step, 'dqe_loss')
                full = _median(record, case, step, 'dqe_loss_full_dose')
                row.append('-' if used is None else
                           f"{100 * used:.3f} % ({100 * full:.3f} %)")
            lines.append('| ' + ' | '.join(row) + ' |')
        lines.append('')
    wrong = []
    for m in record['movies']:
        for case in cases:
            for step in record['steps']:
                r = m['cases'][case][str(step)]
                if r['flagged'] != (case != 'exact'):
                    loss = '-' if r['dqe_loss'] is None else '%.3f %%' % (100 * r['dqe_loss'])
                    wrong.append(f"{case} step {step} movie {m['movie']} ({m['kind']}): "
                                 f"{'false alarm' if case == 'exact' else 'missed'}"
                                 f"{' (' + ', '.join(r['reasons']) + ')' if r['reasons'] else ''}"
                                 f", DQE loss {loss}")
    if wrong:
        lines += ['Movies the verdict got wrong:', ''] + ['- ' + w for w in wrong] + ['']
    if record.get('drift'):
        lines += drift_table(record)
    return lines


def drift_table(record):
    drift = record['drift']
    count = len(record['movies'])
    at = drift['at']
    lines = [f"Drift: the reference is exact for movies 1-{at - 1} and off by the "
             f"'{drift['case']}' error from movie {at} on ({count} movies):", '',
             '| frame step | movie step | analysed | first analysed >= K | first flagged >= K '
             '| movies late | false alarms before K | running estimate first flagged |',
             '|---|---|---|---|---|---|---|---|']
    by_movie = {m['movie']: m for m in record['movies']}
    for step in record['steps']:
        for movie_step in drift['movie_steps']:
            positions = analysed_positions(count, movie_step)
            movies = [position + 1 for position in positions]
            after = [m for m in movies if m >= at]
            first = after[0] if after else None
            flagged = [m for m in after
                       if by_movie[m]['cases'][drift['case']][str(step)]['flagged']]
            false = [m for m in movies if m < at
                     and by_movie[m]['cases']['exact'][str(step)]['flagged']]
            run = [r['movie'] for r in drift['running'][f"{step},{movie_step}"]
                   if r['flagged'] and r['movie'] >= at]
            run_false = [r['movie'] for r in drift['running'][f"{step},{movie_step}"]
                         if r['flagged'] and r['movie'] < at]
            lines.append(
                f"| {step} | {movie_step} | {len(movies)} | {first or '-'} | "
                f"{flagged[0] if flagged else 'never'} | "
                f"{flagged[0] - at if flagged else '-'} | {len(false)} |"
                f" {run[0] if run else 'never'}"
                f"{' (flagged before K: ' + str(run_false) + ')' if run_false else ''} |")
    lines.append('')
    return lines


def render(data):
    lines = [f"`{data['command']}`", '',
             f"Seed set {data['seed']} (base {data['seed_base']}); verdict threshold "
             f"{100 * data['max_dqe_loss']:g} % DQE; {data['seconds']:.0f} s; "
             f"CPU: {data['cpu']}.", '']
    for record in data['sessions']:
        lines += session_table(record)
    return '\n'.join(lines)


# ------------------------------------------------------------------ command line
def _list(text, kind=str):
    return [kind(item) for item in text.split(',') if item]


def cpu_name():
    try:
        with open('/proc/cpuinfo') as handle:
            for line in handle:
                if line.startswith('model name'):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--sizes', type=lambda t: _list(t, int), default=[1024])
    parser.add_argument('--frames', type=lambda t: _list(t, int), default=[40, 20],
                        help='frames per movie (default 40,20)')
    parser.add_argument('--steps', type=lambda t: _list(t, int), default=[1, 2, 4, 8],
                        help='frame steps (default 1,2,4,8)')
    parser.add_argument('--dose', type=float, default=1.0, help='e/px/frame (default 1)')
    parser.add_argument('--movies', type=int, default=12, help='movies per session')
    parser.add_argument('--cases', type=_list, default=list(DEFAULT_CASES),
                        help='comma-separated, from: ' + ','.join(CASES))
    parser.add_argument('--drift-case', default='sector',
                        help='the error from movie --drift-at on (default sector)')
    parser.add_argument('--drift-at', type=int, help='K (default: movies // 3 + 1)')
    parser.add_argument('--movie-steps', type=lambda t: _list(t, int), default=[1, 2, 5, 10])
    parser.add_argument('--no-drift', action='store_true', help='skip the drift part')
    parser.add_argument('--max-dqe-loss', type=float, default=VerdictSettings().max_dqe_loss,
                        help='the verdict\'s threshold (fraction; default the protocol\'s)')
    parser.add_argument('--seed', default='check', help='tune, check (default) or an integer')
    parser.add_argument('--json', help='write every movie\'s numbers here')
    args = parser.parse_args(argv)
    unknown = set(args.cases) - set(CASES) - {'growing'}
    if unknown or 'growing' in args.cases:
        parser.error(f"cases: from {','.join(c for c in CASES if c != 'growing')}")
    if args.drift_case not in CASES or args.drift_case in ('exact', 'growing'):
        parser.error('--drift-case: one of the wrong references')
    args.seed_base = SEED_SETS[args.seed] if args.seed in SEED_SETS else int(args.seed)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == '--table':
        with open(argv[1]) as handle:
            print(render(json.load(handle)))
        return 0
    args = parse(argv)
    command = 'python benchmarks/frames_needed.py ' + ' '.join(shlex.quote(a) for a in argv)
    started = time.time()

    def log(text):
        print(text, file=sys.stderr, flush=True)

    verdict_settings = VerdictSettings(max_dqe_loss=args.max_dqe_loss)
    records = []
    for size in args.sizes:
        for frames in args.frames:
            session = Session(size, frames, args.dose, 'counting', 'raw', args.movies)
            drift = None if args.no_drift else {
                'case': args.drift_case, 'movie_steps': args.movie_steps,
                'at': args.drift_at or args.movies // 3 + 1}
            records.append(run_session(session, args.seed_base, args.cases, args.steps,
                                       drift, verdict_settings, log))
    data = {'command': command.strip(), 'seed': args.seed, 'seed_base': args.seed_base,
            'max_dqe_loss': args.max_dqe_loss, 'cpu': cpu_name(), 'sessions': records,
            'seconds': round(time.time() - started, 1)}
    publish(data, render, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
