"""The protocol's form as pyworkflow draws it, read from the form's definition (no display).

pyworkflow's FormWindow draws one tab per section except "General" and
"Parallelization": of those two it draws only its own parameters, in the
form's header (run name, run mode, host, threads, MPI), and the GPU
parameters added with ``addHidden``. A parameter of ours declared after
``form.addParallelSection`` lands in the "Parallelization" section and is
drawn nowhere, not even in Advanced mode; these tests walk the definition
and name any such parameter. The Summary and Methods tabs write the run name
between underscores (pyworkflow's italics): the default run name must hold
none of its own.
"""
import pytest
from pyworkflow.protocol import GPU_LIST, USE_GPU
from pyworkflow.protocol.params import Form
from pyworkflow.utils import HYPER_ITALIC, parseHyperText

from scipion_gain.protocols import GainProtMovieGain

#: sections FormWindow._createSections draws no tab for
HEADER_SECTIONS = ('General', 'Parallelization')


def header_params(protocol):
    """The parameters pyworkflow draws in the form's header: those of a bare form's
    General and Parallelization sections, and the GPU ones."""
    bare = Form(protocol)
    bare.addParallelSection(threads=2, mpi=1)
    names = {USE_GPU, GPU_LIST}
    for section in bare.iterSections():
        names.update(name for name, _ in section.iterParams())
    return names


def undrawn_params(protocol):
    """(section, name) of every parameter the form window would show nowhere."""
    header = header_params(protocol)
    out = []
    for section in protocol._definition.iterSections():
        label = section.getLabel()
        for name, param in section.iterParams():
            hidden = param.condition.get() == 'False'  # what addHidden declares
            if name in header:
                continue
            if label in HEADER_SECTIONS or hidden:
                out.append((label, name))
    return out


def test_every_parameter_of_the_movie_gain_form_is_drawn_in_a_tab():
    protocol = GainProtMovieGain()
    assert undrawn_params(protocol) == []
    tabs = [s.getLabel() for s in protocol._definition.iterSections()
            if s.getLabel() not in HEADER_SECTIONS]
    assert tabs and all(any(True for _ in s.iterParams())
                        for s in protocol._definition.iterSections() if s.getLabel() in tabs)


def test_the_walk_names_a_parameter_declared_after_the_parallel_section():
    from pyworkflow.protocol.params import BooleanParam

    class Stray(GainProtMovieGain):
        def _defineParams(self, form):
            GainProtMovieGain._defineParams(self, form)  # ends with the parallel section
            form.addParam('strayOption', BooleanParam, default=False, label='Stray?')

    assert undrawn_params(Stray()) == [('Parallelization', 'strayOption')]


@pytest.mark.parametrize('cls', [GainProtMovieGain])
def test_the_default_run_name_is_plain_text_in_the_summary_and_methods_headers(cls):
    from pyworkflow.plugin import Domain
    Domain.getProtocols()  # registers each protocol's plugin, as the GUI does
    name = cls.getClassLabel()
    tags = []
    header = '> _%s_' % name   # pyworkflow's header line of both tabs
    shown = parseHyperText(header, lambda match, tag: tags.append((tag, match.group()))
                           or match.group('italic'))
    assert tags == [(HYPER_ITALIC, ' _%s_' % name)], tags  # one italic span: the whole name
    assert shown == '>' + name


def test_the_protocol_help_has_no_docstring_indentation_and_no_python_in_its_words():
    help_text = GainProtMovieGain.getHelpText()
    assert help_text.startswith('Estimate the gain')
    assert not [line for line in help_text.splitlines() if line.startswith(' ')]
    protocol = GainProtMovieGain()
    for section in protocol._definition.iterSections():
        for name, param in section.iterParams():
            words = param.help.get() or ''
            assert '//' not in words and 'benchmarks/' not in words, name
            assert '1 / (1 +' not in words, name  # the formula is in the documentation
