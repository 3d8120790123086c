"""scipion-em-gain: blind estimation of DED camera gain from movies (Scipion 3 plugin)."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.abspath(os.path.dirname(__file__))


def read(name):
    with open(os.path.join(HERE, name), encoding='utf-8') as handle:
        return handle.read()


# The version lives in one place: scipion_gain/__init__.py.
VERSION = re.search(r"^__version__ = '([^']+)'", read('scipion_gain/__init__.py'), re.M).group(1)

FACILITIES = ['scipion-em-facilities>=3.3.1', 'scipion-app>=3.8']

setup(
    name='scipion-em-gain',
    version=VERSION,
    description='Estimate and validate the gain of direct electron detectors from cryo-EM movies '
                '(Sorzano et al. 2018), as a Scipion 3 plugin and a command line',
    long_description=read('README.rst'),
    long_description_content_type='text/x-rst',
    license='GPL-3.0-or-later',
    python_requires='>=3.8',
    packages=find_packages(exclude=['tests', 'tests.*', 'benchmarks']),
    include_package_data=True,
    package_data={'scipion_gain': ['protocols.conf', 'templates/*.json.template']},
    # Versions chosen to fit what scipion-em pins (numpy 1.26.1, matplotlib 3.8.1,
    # scipy<=1.10.0, mrcfile<=1.4.3, tifffile 2023.9.26, ncempy 1.11.3).
    install_requires=[
        'scipion-pyworkflow>=3.10',
        'scipion-em>=3.10',
        'numpy',
        'scipy',
        'mrcfile',
        'matplotlib',
        'tifffile',
        'imagecodecs>=2023.9.18',
        'ncempy',
    ],
    extras_require={
        'gpu': ['cupy-cuda12x>=13,<14'],
        # The gain check monitor and the workflow template build on the facilities
        # monitor; scipion-em-facilities pulls scipion-em-xmipp, whose plugin needs
        # scipion-app to import (tested set: 3.3.1, 29.0.1, 3.8.3 in constraints.txt).
        'facilities': FACILITIES,
        # `make test` installs the facilities too (about 10 s, wheels only but one
        # small sdist), so that the monitor and template tests run instead of skipping.
        'test': ['pytest'] + FACILITIES,
    },
    entry_points={
        'pyworkflow.plugin': ['scipion_gain = scipion_gain'],
        'console_scripts': ['scipion-gain = scipion_gain.cli:main'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)',
        'Topic :: Scientific/Engineering',
    ],
)
