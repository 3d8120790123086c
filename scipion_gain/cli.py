"""The ``scipion-gain`` entry point (``python -m scipion_gain.cli`` works too).

The commands live in :mod:`scipion_gain.commands`, one module each; what they
share (argument checks, output paths, one-line errors) in
:mod:`scipion_gain.commands.common`.
"""
import sys

from .commands import build_parser, main
from .commands.common import EXIT_BAD_INPUT

__all__ = ['build_parser', 'main', 'EXIT_BAD_INPUT']

if __name__ == '__main__':
    sys.exit(main())
