"""Scipion environment for the tests, set before anything imports pyworkflow.

pyworkflow reads its configuration once, at its first import, so this module
(loaded by pytest before any test module) sets it up: a private
SCIPION_USER_DATA / SCIPION_HOME under a temporary folder, a SLURM-capable
hosts.conf (tests/slurm; local unless a protocol asks for the queue), the
venv's python for the protocol subprocesses, no test-data download, no
notifications and fast streaming polls. Values already in the
environment win, so a developer can point the tests elsewhere.
Set SCIPION_GAIN_KEEP_TEST_DATA=1 to keep the temporary folder.
"""
import atexit
import os
import shutil
import sys
import tempfile

_ROOT = tempfile.mkdtemp(prefix='scipion-gain-tests-')
# One hosts.conf for every project of the session (pyworkflow reads it at its first
# import): the SLURM one of tests/slurm, inert until a protocol sets _useQueue, so the
# other tests run locally as before and test_slurm.py can queue.
_HOSTS = os.path.join(_ROOT, 'hosts.conf')
shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'slurm', 'hosts.conf'),
            _HOSTS)

for _name, _value in {
        'SCIPION_DOMAIN': 'pwem',
        'SCIPION_HOSTS': _HOSTS,
        'SCIPION_PYTHON': sys.executable,
        'SCIPION_HOME': _ROOT,
        'SCIPION_USER_DATA': os.path.join(_ROOT, 'ScipionUserData'),
        'SCIPION_TESTS': os.path.join(_ROOT, 'tests-data'),
        'SCIPION_TEST_NOSYNC': '1',
        'SCIPION_NOTIFY': 'False',
        'SCIPION_STEPS_CHECK_SEC': '1',
        'SCIPION_EM_NEW_FILE_CHECK_SEC': '1',
}.items():
    os.environ.setdefault(_name, _value)


@atexit.register
def _cleanup():
    if not os.environ.get('SCIPION_GAIN_KEEP_TEST_DATA'):
        shutil.rmtree(_ROOT, ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: runs a Scipion project in streaming (tens of '
                                       'seconds); part of `make test`, deselect with -m "not slow"')
