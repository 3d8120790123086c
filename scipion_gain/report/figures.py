"""The figures people judge a gain by, as plain functions returning matplotlib figures.

Each function takes arrays or parsed statistics (the dicts of
``movie_%06d_stats.json`` / ``result.report()``) and returns a
:class:`matplotlib.figure.Figure` built without pyplot: no global state, no
display needed (save it with ``fig.savefig`` or put it in a Tk canvas). The
Scipion viewer, the ``scipion-gain report`` command and the tests share them.

* :func:`gain_image_figure`: a gain map. A residual is drawn on one fixed,
  symmetric scale around 1 (``residual_range``, default +-5 %), the same for
  every movie, so that a good and a bad residual look different; a flagged
  residual wider than that gets its own wider scale, said on its colour bar; a
  gain itself keeps a percentile stretch, labelled as such.
* :func:`histogram_figure`: overlaid histograms of several movies' maps, one
  colour each in time order (Sorzano et al. 2018, Fig. 2 bottom).
* :func:`timeline_figure`: the verdict and its DQE loss, p2.5 / p97.5, std and
  the two ratios against movie id (Fig. 2 top): the paper's thresholds drawn,
  the values over them marked, and the movies whose verdict is flagged shaded.
* :func:`defect_figure`: a defect label image (estimator.defects: dead and hot
  pixels, dead and broken rows and columns), counts in the legend.
* :func:`spectrum_figure`: the power spectrum of a movie's summed corrected
  frames, where a gain problem shows as a cross, with its strength.

Movies are named by their id everywhere (``MovieRecord.id``). The ``run_*``
helpers at the end build the same figures from a
:class:`~scipion_gain.report.run_folder.RunData`.
"""
import dataclasses

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..estimator.defects import (BROKEN_COLUMN, BROKEN_ROW, DEAD_COLUMN, DEAD_PIXEL, DEAD_ROW,
                                 HOT_PIXEL, LABELS, UNUSABLE)
from ..estimator.statistics import Thresholds, map_statistics
from ..estimator.verdict import HUGE_RATIO as HUGE, PAPER_FLAGS, dqe_percent, paper_over, verdict_of
from .run_folder import _movies_words, format_time, onset

FIRST_COLOUR = '#1f77b4'
LAST_COLOUR = '#d62728'
FLAG_COLOUR = '#d62728'
OK_COLOUR = '#2ca02c'
THRESHOLD_COLOUR = '#ff7f0e'
#: the residual maps' fixed scale: 1 +- this (0.05: +-5 %)
RESIDUAL_RANGE = 0.05
RESIDUAL_CMAP = 'RdBu_r'
#: the histograms' colours in time order: blue (first) through green and yellow to red (last)
HISTOGRAM_CMAP = 'turbo'

#: defect kinds as drawn: (label code, colour); names from estimator.defects.LABELS
DEFECT_COLOURS = ((DEAD_PIXEL, '#000000'), (HOT_PIXEL, '#d62728'), (DEAD_ROW, '#6a3d9a'),
                  (BROKEN_ROW, '#cab2d6'), (DEAD_COLUMN, '#1b7837'), (BROKEN_COLUMN, '#7fbf7b'),
                  (UNUSABLE, '#ff7f0e'))
#: the kinds drawn as single pixels (ringed when few)
PIXEL_KINDS = (DEAD_PIXEL, HOT_PIXEL, UNUSABLE)
LINE_KINDS = {DEAD_ROW: 0, BROKEN_ROW: 0, DEAD_COLUMN: 1, BROKEN_COLUMN: 1}
#: label code -> the key of the stats JSON's defects 'counts'
COUNT_KEYS = {DEAD_PIXEL: 'dead_pixels', HOT_PIXEL: 'hot_pixels', DEAD_ROW: 'dead_rows',
              BROKEN_ROW: 'broken_rows', DEAD_COLUMN: 'dead_columns',
              BROKEN_COLUMN: 'broken_columns', UNUSABLE: 'unusable_pixels'}


def _figure(width=7.0, height=5.0):
    return Figure(figsize=(width, height), dpi=100, layout='constrained')


def _good(gain, defects, dtype=np.float64):
    values = np.asarray(gain, dtype=dtype)
    if defects is not None and np.any(defects) and not np.all(defects):
        return values[~np.asarray(defects, dtype=bool)]
    return values.ravel()


def clip_limits(gain, defects=None, clip=(0.5, 99.5)):
    """Display limits: the ``clip`` percentiles of the good pixels (never equal)."""
    values = _good(gain, defects)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, clip)
    if not high > low:
        centre = float(low)
        spread = max(abs(centre) * 1e-3, 1e-6)
        low, high = centre - spread, centre + spread
    return float(low), float(high)


def _percent(value):
    return f"{100 * value:g} %"


def residual_span(gain, defects=None, clip=(0.5, 99.5)):
    """The half-width of a residual's own symmetric scale around 1: the larger distance of
    its ``clip`` percentiles (good pixels) from 1, rounded up to one significant digit
    (0.23 -> 0.3), so that a colour bar reads in round per cents without wasting its range."""
    low, high = clip_limits(gain, defects, clip)
    spread = max(abs(1.0 - low), abs(high - 1.0), 1e-6)
    decade = 10.0 ** np.floor(np.log10(spread))
    return float(round(np.ceil(spread / decade - 1e-9) * decade, 12))


def gain_image_figure(gain, defects=None, title=None, stats=None, clip=(0.5, 99.5),
                      residual_range=None, cmap=None, own_scale=False):
    """A gain map with a colour bar that says what its scale is.

    ``residual_range`` (e.g. 0.05): a residual, drawn from 1 - r to 1 + r on a
    diverging colour map, the same for every movie (values beyond saturate).
    ``own_scale`` (a flagged residual): when the map spreads beyond that fixed
    scale, it is drawn on its own wider symmetric scale (:func:`residual_span`),
    said on the colour bar, so that the size of what is wrong can be read (on
    the fixed scale such a map is solid bars). None: a gain, stretched to its
    own ``clip`` percentiles of the pixels not in ``defects`` (True or a label
    > 0 = defective). ``stats`` (a report dict) adds the paper's statistics and
    flags and the verdict under the image.
    """
    gain = np.asarray(gain, dtype=np.float32)
    mask = None if defects is None else np.asarray(defects) > 0
    fig = _figure(6.4, 6.0)
    ax = fig.add_subplot()
    if residual_range is not None:
        fixed = float(residual_range)
        own = residual_span(gain, mask if mask is not None and mask.mean() < 0.5 else None,
                            clip) if own_scale else 0.0
        r = max(fixed, own)
        image = ax.imshow(gain, cmap=cmap or RESIDUAL_CMAP, vmin=1 - r, vmax=1 + r,
                          interpolation='antialiased', origin='upper')
        colorbar = fig.colorbar(image, ax=ax, shrink=0.85, extend='both')
        if r > fixed:
            colorbar.set_label(f"residual gain; this flagged map's own scale 1 \u00b1 "
                               f"{_percent(r)}\n(wider than the fixed \u00b1 {_percent(fixed)} "
                               f"of the maps without a problem)")
            colorbar.ax.set_gid('own-scale')
        else:
            colorbar.set_label(f"residual gain; fixed scale 1 \u00b1 {_percent(r)} "
                               f"(the same for every movie)")
            colorbar.ax.set_gid('residual-scale')
    else:
        if mask is not None and mask.mean() >= 0.5:
            mask = None
        low, high = clip_limits(gain, mask, clip)
        image = ax.imshow(gain, cmap=cmap or 'gray', vmin=low, vmax=high,
                          interpolation='antialiased', origin='upper')
        colorbar = fig.colorbar(image, ax=ax, shrink=0.85, extend='both')
        colorbar.set_label(f"gain (multiplies raw frames); stretched to this map's "
                           f"{clip[0]:g}-{clip[1]:g} percentiles")
        colorbar.ax.set_gid('percentile-stretch')
    ax.set_title(title or 'gain')
    ax.set_xlabel(f"x (pixel), {gain.shape[1]} columns")
    ax.set_ylabel(f"y (pixel), {gain.shape[0]} rows")
    if stats is not None:  # a figure-level label: the constrained layout makes room for it
        verdict = verdict_of(stats) if _has_verdict(stats) else None
        caption = fig.supxlabel(stats_caption(stats), fontsize=9, family='monospace',
                                color=FLAG_COLOUR if verdict and verdict.flagged else 'black')
        caption.set_gid('stats')
    return fig


def _has_verdict(stats):
    return any(key in stats for key in ('verdict', 'assessment', 'flagged'))


def stats_caption(stats):
    """Short lines of a report dict: statistics, ratios, the paper's flags, the verdict."""
    s, r = stats.get('statistics', {}), stats.get('ratios', {})
    line1 = '  '.join(f"{k} {s[k]:.4f}" for k in ('mean', 'std', 'p2.5', 'p97.5', 'max') if k in s)
    line2 = '  '.join(f"{k} {_fmt_ratio(v)}" for k, v in r.items())
    verdict = verdict_of(stats) if _has_verdict(stats) else None
    lines = [line1, line2]
    if 'flags' in stats:
        over = paper_over(stats)
        if over:
            lines.append("over the paper's thresholds: " + ', '.join(
                name for key, name in PAPER_FLAGS.items() if key in over))
        else:  # beside a flagged verdict, 'none' alone reads as a contradiction
            lines.append("under the paper's thresholds (they catch coarse errors only)"
                         if verdict is not None and verdict.flagged
                         else "under the paper's thresholds")
    if verdict is not None:
        text = 'verdict: ' + verdict.sentence
        if verdict.dqe_loss is not None and 'DQE' not in verdict.sentence:
            text += f" (DQE loss {dqe_percent(verdict.dqe_loss)})"
        lines.append(_wrap(text, 80))
    return '\n'.join(lines)


def _wrap(text, width):
    import textwrap
    return '\n'.join(textwrap.wrap(text, width)) or text


def _fmt_ratio(value):
    return 'inf' if value >= HUGE else f"{value:.4f}"


def histogram_figure(gains, labels=None, defects=None, bins=120, clip=(0.0, 100.0), log=True,
                     kind='gain', note=None):
    """Overlaid histograms of several maps in time order (Fig. 2 bottom).

    ``gains``: a list of 2-D maps in time order; ``labels``: their names
    (movie ids); ``defects``: a list (or None) of masks whose pixels are left
    out. One bin range is shared: from the lowest of the maps' own ``clip[0]``
    percentiles to the highest of their ``clip[1]`` ones (default: every good
    pixel, the maximum included), so that no curve is cut. Each curve has its
    own colour, in time order from blue (the first movie, a thicker line) to red
    (the last, thicker), and its name in the legend. ``kind``: 'residual' or
    'gain' (axis words); ``note``: a line under the plot (which movies are shown
    and why others are not). A map or mask may also be given as a function that loads it:
    then only one map is held at a time (it is loaded twice, once for the shared range and
    once for its curve), so that eight 4096 x 4096 maps do not take 0.5 GB at once.
    """
    from matplotlib import colormaps
    gains = list(gains)
    if not gains:
        raise ValueError("no gain map to draw a histogram of")
    labels = list(labels) if labels is not None else [f"movie {i + 1}" for i in range(len(gains))]
    defects = list(defects) if defects is not None else [None] * len(gains)
    limits = []
    for v in _good_values(gains, defects):
        if v.size:
            limits.append(_range_of(v, clip))
    low = min(float(a) for a, _ in limits)
    high = max(float(b) for _, b in limits)
    if not high > low:
        low, high = low - 1e-3, high + 1e-3
    edges = np.linspace(low, high, bins + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    fig = _figure(10.0, 4.8)
    ax = fig.add_subplot()
    n = len(gains)
    palette = colormaps[HISTOGRAM_CMAP]
    for number, (v, label) in enumerate(zip(_good_values(gains, defects), labels)):
        counts = _uniform_histogram(v, low, high, bins)
        density = counts / max(1, v.size) / (edges[1] - edges[0])
        end = number in (0, n - 1)
        colour = palette(0.05 + 0.9 * number / max(1, n - 1))
        line, = ax.plot(centres, np.where(density > 0, density, np.nan), drawstyle='steps-mid',
                        color=colour, lw=2.2 if end else 1.2, zorder=3 if end else 2,
                        label=label)
        line.set_gid(f"histogram-{number}")
    if log:
        ax.set_yscale('log')
    ax.set_xlim(low, high)
    ax.axvline(1.0, color='black', lw=0.6, ls=':')
    word = 'residual gain' if kind == 'residual' else 'gain'
    ax.set_xlabel(f"{word} value (the axis spans every pixel of every map shown, "
                  f"defects left out)")
    ax.set_ylabel('density' + (' (log)' if log else ''))
    ax.set_title(f"{word} histograms of {n} movie{'s' if n != 1 else ''}, "
                 f"coloured in time order (blue first, red last)")
    legend = ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0),
                       title='movie', title_fontsize=8)
    legend.set_gid('histogram-legend')
    if note:
        text = fig.supxlabel(_wrap(note, 130), fontsize=8, ha='center')
        text.set_gid('histogram-note')
    return fig


def _good_values(gains, defects):
    """Each map's finite values off its defects (float32), one map at a time; a map or mask
    given as a function is loaded here."""
    for g, d in zip(gains, defects):
        g = g() if callable(g) else g
        d = d() if callable(d) else d
        v = _good(g, None if d is None else np.asarray(d) > 0, dtype=np.float32)
        yield v[np.isfinite(v)]


def _range_of(values, clip):
    """The ``clip`` percentiles of ``values`` (the exact minimum and maximum at 0 and 100,
    otherwise from a subsample of at most a million values)."""
    low = float(values.min()) if clip[0] <= 0 else float(
        np.percentile(values[::max(1, values.size // 1_000_000)], clip[0]))
    high = float(values.max()) if clip[1] >= 100 else float(
        np.percentile(values[::max(1, values.size // 1_000_000)], clip[1]))
    return low, high


def _uniform_histogram(values, low, high, bins):
    """np.histogram's counts for uniform bins on [low, high] (last bin closed), by bincount:
    several times faster on 4K maps."""
    counts = np.zeros(bins, np.int64)
    for start in range(0, values.size, 1 << 20):   # a million at a time: no 4K index array
        chunk = values[start:start + (1 << 20)]
        chunk = chunk[(chunk >= low) & (chunk <= high)]
        index = ((chunk - low) * (bins / (high - low))).astype(np.int64)
        np.minimum(index, bins - 1, out=index)
        counts += np.bincount(index, minlength=bins)[:bins]
    return counts


def _series_from(stats_list, key):
    out = []
    for stats in stats_list:
        value = stats.get('statistics', {}).get(key, stats.get('ratios', {}).get(key, np.nan))
        value = float(value)
        out.append(np.nan if value >= HUGE else value)
    return np.array(out, dtype=float)


def _runs(ids):
    """Consecutive runs of integer ids: [(first, last)]."""
    out = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return [tuple(r) for r in out]


class _Point:
    """What :func:`run_folder.onset` needs of a movie: its id and verdict."""

    def __init__(self, movie_id, flagged):
        self.id, self.flagged = movie_id, flagged


def timeline_figure(stats_list, ids=None, thresholds=None, title=None, acquired=None):
    """The verdict, its DQE loss, p2.5 / p97.5, std and the two ratios against movie id
    (Fig. 2 top; the DQE loss panel when the verdicts carry one).

    ``stats_list``: report dicts in time order; ``ids``: their movie ids
    (default: each dict's ``movie_id``, else 1, 2, ...); ``acquired``: their
    acquisition times (epoch seconds, or None), shown on a top axis.
    ``thresholds`` (default: the first dict's, else the paper's) are dashed;
    the values over them get a filled triangle (gid ``over-threshold``), never
    one under. The movies whose VERDICT (run_folder.verdict_of) is flagged are
    shaded on every panel (gid ``verdict-flagged``) and crossed on the verdict
    strip; a dotted line (gid ``first-flagged``) marks the movie from which
    every later one is flagged: where a reference stopped fitting.
    """
    stats_list = list(stats_list)
    if ids is None:
        ids = [s.get('movie_id') if isinstance(s.get('movie_id'), int) else i + 1
               for i, s in enumerate(stats_list)]
    x = np.asarray(ids, dtype=float)
    if thresholds is None:
        given = next((s['thresholds'] for s in stats_list if s.get('thresholds')), None)
        thresholds = Thresholds(**{k: given[k] for k in ('std', 'percentile_ratio', 'max_ratio')}) \
            if given else Thresholds()
    verdicts = [verdict_of(s) for s in stats_list]
    flagged = np.array([v.flagged for v in verdicts], dtype=bool)
    losses = np.array([np.nan if v.dqe_loss is None else 100 * v.dqe_loss for v in verdicts])
    with_loss = bool(np.isfinite(losses).any())
    fig = _figure(9.0, 11.5 if with_loss else 9.5)
    ratios = [0.45] + [1] * (5 if with_loss else 4)
    axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={'height_ratios': ratios})
    marker = 'o' if len(x) <= 200 else '.'
    strip = axes[0]
    if (~flagged).any():
        strip.plot(x[~flagged], np.zeros((~flagged).sum()), 'o', color=OK_COLOUR, ms=6,
                   label='no problem found', ls='none')
    if flagged.any():
        crosses, = strip.plot(x[flagged], np.zeros(flagged.sum()), 'X', color=FLAG_COLOUR, ms=9,
                              label='flagged', ls='none')
        crosses.set_gid('verdict-flagged')
    strip.set_yticks([])
    strip.set_ylim(-1, 1)
    strip.set_ylabel('verdict', rotation=0, ha='right', va='center')
    strip.legend(fontsize=7, loc='upper left', ncol=2)
    if with_loss:
        _dqe_loss_panel(axes[1], x, losses, flagged, stats_list, marker)
    paper = axes[2:] if with_loss else axes[1:]
    panels = [
        (paper[0], [('p2.5', 'p2.5', FIRST_COLOUR), ('p50', 'median', '0.5'),
                    ('p97.5', 'p97.5', LAST_COLOUR)], None, None, 'percentiles'),
        (paper[1], [('std', 'std', 'black')], thresholds.std, 'std', 'std'),
        (paper[2], [('p97.5/p2.5', 'p97.5 / p2.5', 'black')], thresholds.percentile_ratio,
         'percentile_ratio', 'p97.5 / p2.5'),
        (paper[3], [('max/p97.5', 'max / p97.5', 'black')], thresholds.max_ratio, 'max_ratio',
         'max / p97.5'),
    ]
    start = onset([_Point(i, f) for i, f in zip(ids, flagged)])
    spans = _runs([i for i, f in zip(ids, flagged) if f])
    for ax in axes:
        for first, last in spans:
            band = ax.axvspan(first - 0.45, last + 0.45, color=FLAG_COLOUR, alpha=0.12, lw=0)
            band.set_gid('verdict-band')
        if start is not None:
            vline = ax.axvline(start.id - 0.5, color=FLAG_COLOUR, ls=':', lw=1.0)
            vline.set_gid('first-flagged')
    for ax, curves, threshold, flag, ylabel in panels:
        for key, label, colour in curves:
            y = _series_from(stats_list, key)
            if key == 'p50' and np.all(np.isnan(y)):
                continue
            ax.plot(x, y, marker=marker, ms=3, lw=1.0, color=colour, label=label)
            if threshold is not None:
                over = np.isfinite(y) & (y > threshold)
                if over.any():
                    marks, = ax.plot(x[over], y[over], '^', ms=8, color=THRESHOLD_COLOUR,
                                     mec='black', mew=0.5, zorder=5, ls='none',
                                     label="over the paper's threshold")
                    marks.set_gid('over-threshold')
        if threshold is not None:
            line = ax.axhline(threshold, color=THRESHOLD_COLOUR, ls='--', lw=1.2,
                              label=f"paper's threshold {threshold:g}")
            line.set_gid('threshold')
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc='best', ncol=4)   # where it hides no movie's point
    axes[-1].set_xlabel('movie id')
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(x):
        axes[-1].set_xlim(x.min() - 0.7, x.max() + 0.7)
    if acquired is not None and any(a is not None for a in acquired):
        _time_axis(strip, ids, acquired, flagged)
    n_flagged = int(flagged.sum())
    summary = f"{n_flagged} of {len(x)} movies flagged"
    if start is not None:
        summary += f"; every movie from movie {start.id} on"
    fig.suptitle((title + ': ' if title else '') + summary)
    return fig


#: every movie's acquisition time is written on the time line's top axis up to this many
TIME_LABELS = 16


def time_label_ids(ids, acquired, flagged=None, most=TIME_LABELS):
    """The movie ids whose acquisition time the top axis names: every movie up to ``most``,
    else ``most // 2`` spread over the run plus the first movie of each flagged stretch,
    leaving out spread picks that would crowd one of those."""
    known = [(i, f) for i, t, f in zip(ids, acquired, flagged if flagged is not None
                                       else [False] * len(ids)) if t is not None]
    if len(known) <= most:
        return [i for i, _ in known]
    must = [i for n, (i, f) in enumerate(known) if f and (n == 0 or not known[n - 1][1])]
    spread = [known[p][0] for p in np.unique(np.round(
        np.linspace(0, len(known) - 1, most // 2)).astype(int))]
    gap = (known[-1][0] - known[0][0]) / most
    spread = [i for i in spread if all(abs(i - m) >= gap for m in must)]
    return sorted(set(must[:most]) | set(spread))


def _time_axis(ax, ids, acquired, flagged=None):
    """Acquisition times on a top axis (the movies of :func:`time_label_ids`)."""
    times = dict(zip(ids, acquired))
    chosen = time_label_ids(ids, acquired, flagged)
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    top.set_xticks(chosen)
    top.set_xticklabels([format_time(times[i]) for i in chosen], fontsize=7,
                        rotation=30 if len(chosen) > 10 else 0)
    top.set_xlabel('acquired (time of the movie file)', fontsize=8)
    top.set_gid('acquisition-time')
    ax.callbacks.connect('xlim_changed', lambda a: top.set_xlim(a.get_xlim()))
    return top


def _dqe_loss_panel(ax, x, losses, flagged, stats_list, marker):
    """The verdict's measure: the DQE the found structure costs at the movie's dose, with
    the verdict's threshold dashed. A symmetric-log axis: linear up to the threshold, so
    that a zero loss and a loss of tens of per cent are both on it."""
    given = next((s['verdict'].get('max_dqe_loss') for s in stats_list
                  if isinstance(s.get('verdict'), dict) and s['verdict'].get('max_dqe_loss')),
                 None)
    line, = ax.plot(x, losses, marker=marker, ms=3, lw=1.0, color='black', label='DQE loss')
    line.set_gid('dqe-loss')
    if flagged.any():
        ax.plot(x[flagged], losses[flagged], 'X', ms=7, color=FLAG_COLOUR, ls='none',
                label='flagged')
    if given:
        threshold = 100 * float(given)
        limit = ax.axhline(threshold, color=THRESHOLD_COLOUR, ls='--', lw=1.2,
                           label=f"the verdict's threshold {threshold:g} %")
        limit.set_gid('dqe-threshold')
        ax.set_yscale('symlog', linthresh=threshold)
    top = np.nanmax(losses) if np.isfinite(losses).any() else 0.0
    ax.set_ylim(0, max(top * 2.0, 2.0 * threshold if given else 0.0, 1e-3))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_ylabel('DQE loss (%)')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc='best', ncol=3)   # upper left hid the first movies' losses


# ------------------------------------------------------------------ defects
def _line_indices(labels, code):
    axis = LINE_KINDS[code]
    present = (labels == code).any(axis=1 - axis)
    return np.flatnonzero(present)


def defect_counts(labels):
    """Counts of a label image in the stats JSON's terms: pixels for dead and hot pixels,
    lines for rows and columns ({'dead_pixels': 20, 'broken_columns': 1, ...})."""
    labels = np.asarray(labels)
    out = {}
    for code, key in COUNT_KEYS.items():
        if code in LINE_KINDS:
            out[key] = int(_line_indices(labels, code).size)
        else:
            out[key] = int((labels == code).sum())
    return out


def _bin_max(labels, limit=1024):
    """Shrink a label image for display keeping every defect visible (max over blocks)."""
    factor = int(np.ceil(max(labels.shape) / limit))
    if factor <= 1:
        return labels, 1
    rows, cols = (np.array(labels.shape) + factor - 1) // factor * factor
    padded = np.zeros((rows, cols), labels.dtype)
    padded[:labels.shape[0], :labels.shape[1]] = labels
    # The highest code wins a block: lines over pixels, hot over dead.
    return padded.reshape(rows // factor, factor, cols // factor, factor).max(axis=(1, 3)), factor


def defect_figure(labels, title=None):
    """The defect map of a label image (estimator.defects codes), one colour per kind.

    The legend counts each kind as the stats JSON does: dead and hot pixels in
    pixels, rows and columns in lines (with their pixels). Single pixels are
    ringed (gid ``defect-<code>``), since at display size they would vanish.
    """
    labels = np.asarray(labels, dtype=np.uint8)
    shown, factor = _bin_max(labels)
    colours = ['#f2f2f2'] + ['#ffffff'] * max(code for code, _ in DEFECT_COLOURS)
    for code, colour in DEFECT_COLOURS:
        colours[code] = colour
    fig = _figure(6.4, 6.4)
    ax = fig.add_subplot()
    ax.imshow(shown, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5,
              interpolation='nearest', extent=(-0.5, shown.shape[1] * factor - 0.5,
                                               shown.shape[0] * factor - 0.5, -0.5))
    for code, colour in DEFECT_COLOURS:
        if code not in PIXEL_KINDS:
            continue
        rows, cols = np.nonzero(labels == code)
        if 0 < rows.size <= 2000 and rows.size < 0.01 * labels.size:
            rings = ax.scatter(cols, rows, s=30, facecolors='none', edgecolors=colour,
                               linewidths=1.0)
            rings.set_gid(f"defect-{code}")
    counts = defect_counts(labels)
    handles = []
    for code, colour in DEFECT_COLOURS:
        number = counts[COUNT_KEYS[code]]
        if not number:
            continue
        if code in LINE_KINDS:
            text = f"{LABELS[code]}: {number} ({int((labels == code).sum())} px)"
        else:
            text = f"{LABELS[code]}: {number}"
        handles.append(Patch(facecolor=colour, edgecolor='0.3', label=text))
    if not handles:
        handles = [Line2D([], [], ls='none', label='no defects found')]
    legend = ax.legend(handles=handles, fontsize=8, loc='upper center',
                       bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    legend.set_gid('defect-counts')
    ax.set_title(title or 'defect map')
    ax.set_xlabel(f"x (pixel), {labels.shape[1]} columns")
    ax.set_ylabel(f"y (pixel), {labels.shape[0]} rows")
    ax.set_xlim(-0.5, labels.shape[1] - 0.5)
    ax.set_ylim(labels.shape[0] - 0.5, -0.5)
    return fig


# ------------------------------------------------------------------ power spectrum
def _binned_log_amplitude(power_centred, limit=1024):
    """log10 amplitude of a centred power spectrum, block-averaged (power) to <= limit px."""
    factor = int(np.ceil(max(power_centred.shape) / limit))
    p = power_centred
    if factor > 1:
        rows, cols = (np.array(p.shape) // factor) * factor
        p = p[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))
    return 0.5 * np.log10(np.maximum(p, np.finfo(float).tiny))


def spectrum_figure(image, mask=None, title=None):
    """The power spectrum (log amplitude) of a summed movie, its cross strength in the title.

    A gain pattern constant along columns is a bright horizontal line through
    the centre, one along rows a vertical line: the "cross". The number is the
    mean power on the stronger axis over the power just beside it (1: no cross;
    estimator.spectrum).
    """
    from ..estimator.spectrum import power_spectrum
    found = power_spectrum(image, mask=mask)
    power = found.log_amplitude.astype(np.float64)     # 10^(2 x), one float64 frame
    power *= 2
    shown = _binned_log_amplitude(np.power(10.0, power, out=power))
    del power
    fig = _figure(6.4, 6.4)
    ax = fig.add_subplot()
    low, high = np.percentile(shown, (1, 99.8))
    rows, cols = shown.shape
    image_artist = ax.imshow(shown, cmap='gray', vmin=low, vmax=high, interpolation='antialiased',
                             extent=(-0.5, 0.5, 0.5, -0.5))
    colorbar = fig.colorbar(image_artist, ax=ax, shrink=0.85)
    colorbar.set_label('log10 amplitude (1-99.8 percentiles)')
    ax.set_xlabel('spatial frequency x (1/pixel)')
    ax.set_ylabel('spatial frequency y (1/pixel)')
    strength = (f"cross strength {found.cross_strength:.3g}: power on the axes / beside "
                f"(1: no cross)\nhorizontal line (columns) {found.horizontal:.3g}, "
                f"vertical line (rows) {found.vertical:.3g}")
    ax.set_title((title or 'power spectrum') + '\n' + strength, fontsize=10)
    _point_at_arms(ax, found)
    # the numbers behind the title, for the report and the tests (not the 4K picture: the
    # figure holds its own binned one)
    fig._cross = dataclasses.replace(found, log_amplitude=None)
    return fig


#: a cross arm at least this strong is pointed at by arrows: its power on the axis is twice
#: that beside it, but the line is one pixel wide and vanishes in a figure at page size
CROSS_ARROWS = 2.0


def _point_at_arms(ax, found):
    """Arrows at both ends of each strong arm of the cross, just inside the frame."""
    arms = []
    if found.horizontal >= CROSS_ARROWS:
        arms += [((-0.38, 0.0), (-0.49, 0.0)), ((0.38, 0.0), (0.49, 0.0))]
    if found.vertical >= CROSS_ARROWS:
        arms += [((0.0, -0.38), (0.0, -0.49)), ((0.0, 0.38), (0.0, 0.49))]
    for tip, tail in arms:
        arrow = ax.annotate('', xy=tip, xytext=tail, xycoords='data',
                            arrowprops=dict(arrowstyle='-|>', color=FLAG_COLOUR, lw=2.5,
                                            mutation_scale=18))
        arrow.set_gid('cross-arm')


def spectrum_caption(found, label, verdict_word, kind='residual'):
    """The caption of a power spectrum that says what can be seen in it; ``kind``: the
    movie's ('gain': no reference applied, the frames as recorded)."""
    frames = 'corrected frames' if kind == 'residual' else 'frames (no gain reference applied)'
    head = f"Power spectrum of the sum of {label}'s {frames} ({verdict_word}). "
    arms = [(name, value, pattern) for name, value, pattern in
            (('horizontal', found.horizontal, 'constant along columns'),
             ('vertical', found.vertical, 'constant along rows')) if value >= CROSS_ARROWS]
    if not arms:
        return head + (f"No line through the centre: the power on the axes is "
                       f"{found.cross_strength:.2f} times that beside them (1: no cross).")
    said = '; '.join(f"the thin {name} line through the centre, between the red arrows, "
                     f"holds {value:.0f} times the power beside it (a pattern {pattern})"
                     for name, value, pattern in arms)
    return head + said[0].upper() + said[1:] + '. Without a gain problem it would be 1.'


# --- the same figures from a loaded run (RunData) -------------------------------------------

def _kind_words(kind):
    return 'residual gain' if kind == 'residual' else 'gain'


def movie_gain_figure(data, movie_id, residual_range=RESIDUAL_RANGE):
    """The gain (or residual gain) image of movie ``movie_id`` of a run: a residual on the
    fixed scale 1 +- ``residual_range``, a gain stretched to its percentiles."""
    record = data.movie(movie_id)
    gain = record.load_gain()
    if gain is None:
        raise ValueError(f"{record.label}: no gain map in the run folder")
    residual = record.kind == 'residual'
    return gain_image_figure(gain, record.load_defects(),
                             title=f"{_kind_words(record.kind)} of {record.label}",
                             stats=record.stats,
                             residual_range=residual_range if residual else None,
                             own_scale=record.flagged)


def accumulated_figure(data, residual_range=RESIDUAL_RANGE):
    """The running accumulated estimate of a run, or None when there is none."""
    gain, defects = data.load_accumulated()
    if gain is None:
        return None
    stats = data.accumulated_stats or {}
    residual = (stats.get('kind') or data.kind) == 'residual'
    movies = stats.get('movies')
    over = f" over {len(movies)} movies" if isinstance(movies, list) else ''
    verdict = data.accumulated_verdict
    return gain_image_figure(gain, defects, title=f"accumulated {_kind_words(data.kind)}{over}",
                             stats=data.accumulated_stats,
                             residual_range=residual_range if residual else None,
                             own_scale=bool(verdict and verdict.flagged))


def select_movies(records, ids=None, most=8):
    """Records with a gain map to overlay: the given movie ids, else ``most`` spread evenly
    over the run, always the first, the last and the first of the flagged run (where the
    reference stopped fitting; else the first flagged movie)."""
    records = [r for r in records if r.gain_path is not None]
    if ids is not None:
        wanted = set(int(i) for i in ids)
        return [r for r in records if r.id in wanted]
    if len(records) <= most:
        return records
    picks = set(np.round(np.linspace(0, len(records) - 1, most)).astype(int).tolist())
    first_flagged = onset(records) or next((r for r in records if r.flagged), None)
    if first_flagged is not None:
        place = records.index(first_flagged)
        if place not in picks:  # it takes the place of the nearest spread pick
            inner = sorted(picks - {0, len(records) - 1}, key=lambda p: abs(p - place))
            if inner:
                picks.discard(inner[0])
            picks.add(place)
    return [records[i] for i in sorted(picks)]


def histogram_note(data, shown, ids=None):
    """Which movies a histogram figure shows and why the others are not (one sentence)."""
    shown_ids = [r.id for r in shown]
    with_gain = [r.id for r in data.with_gain()]
    without = [r.id for r in data.movies if r.gain_path is None]
    left = [i for i in with_gain if i not in set(shown_ids)]
    if ids is not None:
        why = 'the movies asked for'
    elif left:
        why = (f"{len(shown_ids)} movies spread over the run (the first, the last and the "
               f"first flagged always), since more curves cannot be told apart")
    else:
        why = 'every analysed movie'
    text = f"Shown: {_movies_words(shown_ids)} ({why})."
    if left:
        text += (f" Left out: {_movies_words(left)}"
                 + (" (the viewer's \"Movies for the histograms\" draws any of them)."
                    if ids is None else '.'))
    if without:
        text += f" No map saved for {_movies_words(without)}."
    return text


def run_histogram_figure(data, ids=None, most=8, with_note=True):
    """Histograms of the given movies of a run, else of :func:`select_movies`' choice;
    ``with_note``: :func:`histogram_note` under the plot (a report puts it in the caption)."""
    records = select_movies(data.movies, ids, most)
    if not records:
        return None
    labels = [r.short_label + (' (flagged)' if r.flagged else '') for r in records]
    return histogram_figure([r.load_gain for r in records], labels,
                            [r.load_defects for r in records], kind=data.kind,
                            note=histogram_note(data, records, ids) if with_note else None)


def run_timeline_figure(data):
    if not data.movies:
        return None
    return timeline_figure([m.stats for m in data.movies], [m.id for m in data.movies],
                           data.thresholds, title=f"{_kind_words(data.kind)} per movie",
                           acquired=[m.acquired for m in data.movies])


def reference_labels(gain):
    """Defect labels of a gain reference (no label image is written for it): the same
    finder as the protocol's (estimator.defects, from the map)."""
    from ..estimator.defects import find_defects
    return find_defects(gain=gain).labels


def run_defect_figure(data, movie_id=None, source=None):
    """The defect map of a run, or None when there is no map to look at.

    ``source``: 'movie' (movie ``movie_id``), 'accumulated', 'reference' (the
    movies' gain reference) or None: movie ``movie_id`` if given, else the
    accumulated estimate, else the reference, else the last movie. Movies and
    the accumulated estimate are drawn from the label images the protocol
    wrote; the reference from the same finder run on it.
    """
    if source is None:
        if movie_id is not None:
            source = 'movie'
        elif data.accumulated_path is not None and (data.accumulated_defects_path is not None
                                                    or any(m.defects_path for m in data.movies)):
            source = 'accumulated'
        elif data.reference_path is not None:
            source = 'reference'
        else:
            source = 'movie'
    if source == 'reference':
        gain = data.load_reference()
        if gain is None:
            return None
        return defect_figure(reference_labels(gain),
                             title="defects of the movies' gain reference")
    if source == 'accumulated':
        gain, labels = data.load_accumulated_labels()
        if labels is None:
            return None
        return defect_figure(labels, title='defects of the accumulated estimate')
    if movie_id is None:
        with_labels = [m for m in data.movies if m.defects_path is not None]
        if not with_labels:
            return None
        movie_id = with_labels[-1].id
    record = data.movie(movie_id)
    labels = record.load_defect_labels()
    if labels is None:
        return None
    return defect_figure(labels, title=f"defects of {record.label}")


def reference_figure(data):
    """The movies' gain reference (residual mode), or None."""
    gain = data.load_reference()
    if gain is None:
        return None
    labels = reference_labels(gain)
    stats = map_statistics(gain, mask=labels == 0)
    for key in ('flags', 'flagged', 'thresholds'):  # the paper's flags are for residuals
        stats.pop(key)
    return gain_image_figure(gain, labels, title="the movies' gain reference (as used)",
                             stats=stats)


def movie_spectrum_figure(data, movie_id):
    """The power spectrum of movie ``movie_id``'s summed corrected frames, or None
    when its sum was not saved."""
    record = data.movie(movie_id)
    image = record.load_sum()
    if image is None:
        return None
    what = 'frames x the gain reference' if record.kind == 'residual' else 'raw frames'
    return spectrum_figure(image, mask=record.load_defects(),
                           title=f"power spectrum of {record.label}\n(sum of its {what})")


def spectrum_movies(data):
    """The movies whose spectra a report shows: the first, the first of the flagged run
    (else the first flagged), and the last; those with a saved sum only."""
    with_sum = [m for m in data.movies if m.sum_path is not None]
    if not with_sum:
        return []
    chosen = [with_sum[0]]
    start = onset(with_sum) or next((m for m in with_sum if m.flagged), None)
    for record in (start, with_sum[-1]):
        if record is not None and record not in chosen:
            chosen.append(record)
    return chosen
