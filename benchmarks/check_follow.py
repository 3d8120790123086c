"""How long `scipion-gain check --follow` takes to judge a movie after it arrives.

A writer simulates an acquisition: counting movies (``--size`` x ``--size`` x
``--frames``, 1 e/px/frame, a structured detector) written in place, half a
file at a time, one every ``--interval`` seconds, while ``scipion-gain check
--follow`` (residual mode, the exact reference, every movie, every frame)
watches the folder. Arrival is the movie file's last modification; judged is
its stats JSON's. Prints one table row: movies, interval, stable time, the
median and largest arrival-to-judged time, the time from the last arrival to
the command's end minus the quiet time, and the exit status.

    python benchmarks/check_follow.py --movies 20 --interval 2 --size 512 --frames 10
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scipion_gain.io import write_mrc
from scipion_gain.simulate import simulate_frames, simulate_gain


def simulate(folder, count, size, frames):
    detector = simulate_gain((size, size), rng=1)
    write_mrc(str(folder / 'gain.mrc'), detector.correction)
    movies = []
    for index in range(count):
        stack = np.stack(list(simulate_frames((size, size), frames, detector.gain, dose=1.0,
                                              rng=100 + index))).astype(np.float32)
        source = folder / 'source' / f'movie_{index:04d}.mrc'
        source.parent.mkdir(exist_ok=True)
        write_mrc(str(source), stack)
        movies.append(source.read_bytes())
    return movies


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--movies', type=int, default=20)
    parser.add_argument('--interval', type=float, default=2.0)
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--frames', type=int, default=10)
    parser.add_argument('--stable-time', type=float, default=1.0)
    parser.add_argument('--quiet-time', type=float, default=10.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix='check_follow_'))
    movies = simulate(folder, args.movies, args.size, args.frames)
    raw = folder / 'raw'
    raw.mkdir()
    command = [sys.executable, '-m', 'scipion_gain.cli', 'check', str(raw / '*.mrc'),
               '--gain', str(folder / 'gain.mrc'), '--no-orientation-check',
               '--frames-per-movie', '0', '-o', str(folder / 'out'), '--follow',
               '--quiet-time', str(args.quiet_time), '--stable-time', str(args.stable_time),
               '-q']
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for index, data in enumerate(movies):
        time.sleep(args.interval)
        with open(raw / f'movie_{index:04d}.mrc', 'wb') as handle:
            handle.write(data[:len(data) // 2])
            handle.flush()
            time.sleep(0.2)
            handle.write(data[len(data) // 2:])
    last = time.time()
    out, err = process.communicate()
    ended = time.time()
    session = json.loads((folder / 'out' / 'session.json').read_text())
    delays = []
    for movie in session['movies']:
        stats = folder / 'out' / 'extra' / f"movie_{movie['id']:06d}_stats.json"
        delays.append(stats.stat().st_mtime - os.stat(movie['file']).st_mtime)
    load = os.getloadavg()[0]
    print('movies  interval  size x frames  stable  judged  median s  max s  end - quiet s  '
          'exit  load')
    print(f"{args.movies:6d}  {args.interval:8.1f}  {args.size:4d} x {args.frames:<6d}  "
          f"{args.stable_time:6.1f}  {len(delays):6d}  {statistics.median(delays):8.1f}  "
          f"{max(delays):5.1f}  {ended - last - args.quiet_time:13.1f}  "
          f"{process.returncode:4d}  {load:4.1f}")
    if process.returncode not in (0, 1):
        print(err.decode(), file=sys.stderr)


if __name__ == '__main__':
    main()
