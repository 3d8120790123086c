"""The protocol in Scipion's protocol tree, read by pyworkflow's own tree code.

pyworkflow reads each plugin's protocols.conf with ConfigParser inside a
try/except that only logs at INFO level: a file it cannot parse leaves the
"Movies" section without the protocol and nothing fails. This test builds the
tree the project window builds (``ProtocolTreeConfig.load`` with pwem's base
configuration, then every plugin's file) and looks for the protocol there.
"""
import os
from configparser import ConfigParser

import pwem
from pyworkflow import Config
from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig

import scipion_gain


def _children(node, text):
    for child in node.childs:
        if child.text == text:
            return child
    return None


def _protocols_under(node):
    """(class name, label as the tree shows it) of the protocols below ``node``."""
    out = []
    for child in node.childs:
        if child.tag == ProtocolTreeConfig.TAG_PROTOCOL or child.tag.startswith('protocol_'):
            if child.value:
                out.append(child.value)
        out.extend(_protocols_under(child))
    return out


def test_our_protocols_conf_parses():
    parser = ConfigParser()
    parser.optionxform = str
    path = os.path.join(os.path.dirname(scipion_gain.__file__), 'protocols.conf')
    assert parser.read(path) == [path]
    assert parser.has_option('PROTOCOLS', 'Protocols SPA')


def test_movie_gain_is_under_movies_in_the_protocol_tree():
    domain = Config.getDomain()
    base = os.path.join(os.path.dirname(pwem.__file__), 'protocols.conf')
    views = ProtocolTreeConfig.load(domain, base)
    spa = views['Protocols SPA']
    movies = _children(spa, 'Movies')
    assert movies is not None and movies.visible
    assert 'GainProtMovieGain' in _protocols_under(movies)
    # what the tree displays for an entry whose text is "default" (viewprotocols.populateTree)
    protocol = domain.getProtocols()['GainProtMovieGain']
    assert protocol.getClassLabel() == 'scipion-gain - movie gain'
