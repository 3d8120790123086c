"""Figures and an HTML report of a gain run, shared by the Scipion viewer and the command line.

``figures`` holds plain functions returning matplotlib figures (no pyplot
state, no display needed); ``run_folder`` reads a protocol run folder or
statistics JSON files; ``write_report`` writes every figure as PNG plus a
self-contained ``index.html``. Nothing here imports pyworkflow or pwem.
"""


def write_report(run_folder, out_dir, **options):
    """Write the report of ``run_folder`` (or a list of run folders / stats JSON files)
    into ``out_dir``: PNG files and ``index.html``. Returns the path of ``index.html``."""
    from .html import write_report as _write
    return _write(run_folder, out_dir, **options)


__all__ = ['write_report']
