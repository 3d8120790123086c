"""Small file helpers of the movie gain protocol's run folder (no pyworkflow import).

Text and JSON are written atomically (temp file + os.replace): the viewer, the
report and the facilities monitor may read them at any time. The summary line
formats are Xmipp's movie gain formats; summary.txt lines may carry extra
columns after them (the report's parser matches the Xmipp part), while
summaryForMonitor.txt is the facilities monitor's contract and stays exactly
``MONITOR_FORMAT``.
"""
import json
import os
import threading

SUMMARY_FORMAT = ('%s: mean=%f std=%f [min=%f,max=%f] '
                  '2.5%%=%f 25%%=%f 50%%=%f 75%%=%f 97.5%%=%f')
MONITOR_FORMAT = '%s: %f %f %f %f\n'


def summary_line(label, statistics, extra=''):
    """One summary.txt line: the Xmipp fields, then ``extra`` (starting with a space)."""
    s = statistics
    return SUMMARY_FORMAT % (label, s['mean'], s['std'], s['min'], s['max'], s['p2.5'],
                             s['p25'], s['p50'], s['p75'], s['p97.5']) + extra + '\n'


def monitor_line(label, statistics):
    s = statistics
    return MONITOR_FORMAT % (label, s['std'], s['p2.5'], s['p97.5'], s['max'])


def atomic_write(path, text):
    tmp = '%s.tmp%d' % (path, threading.get_ident())
    with open(tmp, 'w') as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_json(path, data):
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + '\n')


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, text)


def read_text(path, strip=True):
    with open(path) as handle:
        text = handle.read()
    return text.strip() if strip else text


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.rstrip('\n') for line in handle]
