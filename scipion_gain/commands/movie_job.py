"""`scipion-gain movie-job JOB.json`: one movie of the movie gain protocol, from its job file.

The work and the job file are :mod:`scipion_gain.movie_job`; this is how each
movie runs as its own process or batch job (QUEUE_FOR_JOBS=Y). Like every
command it runs in an output transaction: a movie that fails leaves only its
``failed`` file (one line), and exit status 2.
"""
from ..movie_job import add_parser, run_command

__all__ = ['add_parser', 'run_command']
