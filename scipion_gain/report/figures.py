"""The figures people judge a gain by, as plain functions returning matplotlib figures.

Each function takes arrays or parsed statistics (the dicts of
``movie_%06d_stats.json`` / ``result.report()``) and returns a
:class:`matplotlib.figure.Figure` built without pyplot: no global state, no
display needed (save it with ``fig.savefig`` or put it in a Tk canvas). The
Scipion viewer, the ``scipion-gain report`` command and the tests share them.

* :func:`gain_image_figure`: a gain map with percentile clipping and a colour bar.
* :func:`histogram_figure`: overlaid histograms of several movies' gains, first
  and last highlighted (Sorzano et al. 2018, Fig. 2 bottom).
* :func:`timeline_figure`: p2.5 / p97.5, std and the two ratios against movie
  index, the thresholds drawn and flagged movies marked (Fig. 2 top).
* :func:`defect_figure`: pixels without signal, outlier pixels, broken rows
  and columns (:func:`classify_defects`).

The ``run_*`` helpers at the end build the same figures from a
:class:`~scipion_gain.report.run_folder.RunData`.
"""
import warnings

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..estimator.statistics import Thresholds, map_statistics
from .run_folder import HUGE_RATIO as HUGE

FIRST_COLOUR = '#1f77b4'
LAST_COLOUR = '#d62728'
FLAG_COLOUR = '#d62728'
THRESHOLD_COLOUR = '#ff7f0e'

#: Defect classes of :func:`classify_defects`: (code, name, colour).
DEFECT_CLASSES = ((1, 'no signal', '#000000'),
                  (2, 'hot pixel (correction < 1/ratio)', '#d62728'),
                  (3, 'cold pixel (correction > ratio)', '#1f77b4'),
                  (4, 'broken column', '#2ca02c'),
                  (5, 'broken row', '#9467bd'))


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


def gain_image_figure(gain, defects=None, title=None, stats=None, clip=(0.5, 99.5), cmap='gray'):
    """The gain map as an image, clipped to the ``clip`` percentiles, with a colour bar.

    ``defects`` (True = no signal) and the other defects :func:`classify_defects`
    finds (hot pixels, broken lines) are left out of the percentiles. ``stats``
    (a report dict) adds its mean, std, percentiles and flags under the image.
    """
    gain = np.asarray(gain, dtype=np.float32)
    # Broken lines and hot pixels would take the whole grey scale: leave them out of the limits.
    outliers = classify_defects(gain, defects) > 0
    low, high = clip_limits(gain, outliers if outliers.mean() < 0.5 else defects, clip)
    fig = _figure(6.4, 6.0)
    ax = fig.add_subplot()
    image = ax.imshow(gain, cmap=cmap, vmin=low, vmax=high, interpolation='antialiased',
                      origin='upper')
    colorbar = fig.colorbar(image, ax=ax, shrink=0.85)
    colorbar.set_label(f"gain (multiplies raw frames), clipped to {clip[0]:g}-{clip[1]:g} %")
    ax.set_title(title or 'gain')
    ax.set_xlabel(f"x (pixel), {gain.shape[1]} columns")
    ax.set_ylabel(f"y (pixel), {gain.shape[0]} rows")
    if stats is not None:  # a figure-level label: the constrained layout makes room for it
        caption = fig.supxlabel(stats_caption(stats), fontsize=8, family='monospace',
                                color=FLAG_COLOUR if stats.get('flagged') else 'black')
        caption.set_gid('stats')
    return fig


def stats_caption(stats):
    """Two short lines of a report dict: statistics, ratios and raised flags."""
    s, r = stats.get('statistics', {}), stats.get('ratios', {})
    flags = [name for name, on in stats.get('flags', {}).items() if on]
    line1 = '  '.join(f"{k} {s[k]:.4f}" for k in ('mean', 'std', 'p2.5', 'p97.5', 'max') if k in s)
    line2 = '  '.join(f"{k} {_fmt_ratio(v)}" for k, v in r.items())
    if 'flags' in stats:
        line2 += '   flags: ' + (', '.join(flags) if flags else 'none')
    return line1 + '\n' + line2


def _fmt_ratio(value):
    return 'inf' if value >= HUGE else f"{value:.4f}"


def histogram_figure(gains, labels=None, defects=None, bins=120, clip=(0.1, 99.9), log=True):
    """Overlaid histograms of several gain maps, the first and last highlighted (Fig. 2 bottom).

    ``gains``: a list of 2-D maps in time order; ``labels``: their names;
    ``defects``: a list (or None) of masks whose pixels are left out. One bin
    range, the ``clip`` percentiles of all maps, is shared. Middle movies are
    thin lines shaded from light to dark grey; the first is blue, the last red.
    """
    gains = [np.asarray(g) for g in gains]
    if not gains:
        raise ValueError("no gain map to draw a histogram of")
    labels = list(labels) if labels is not None else [f"movie {i}" for i in range(len(gains))]
    defects = list(defects) if defects is not None else [None] * len(gains)
    values = [_good(g, d, dtype=np.float32) for g, d in zip(gains, defects)]
    # The shared range from at most ~1e6 samples per map (a 4K map has 16.8e6 pixels).
    pooled = np.concatenate([v[::max(1, v.size // 1_000_000)] for v in values])
    low, high = np.percentile(pooled[np.isfinite(pooled)], clip)
    if not high > low:
        low, high = low - 1e-3, high + 1e-3
    edges = np.linspace(low, high, bins + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    n = len(values)
    for number, (v, label) in enumerate(zip(values, labels)):
        counts = _uniform_histogram(v, low, high, bins)
        density = counts / max(1, v.size) / (edges[1] - edges[0])
        if number == 0:
            style = dict(color=FIRST_COLOUR, lw=2.2, zorder=3, label=f"first: {label}")
        elif number == n - 1:
            style = dict(color=LAST_COLOUR, lw=2.2, zorder=4, label=f"last: {label}")
        else:
            shade = 0.8 - 0.5 * number / max(1, n - 1)
            style = dict(color=str(shade), lw=0.9, zorder=2,
                         label='movies in between' if number == 1 else None)
        line, = ax.plot(centres, density, drawstyle='steps-mid', **style)
        line.set_gid(f"histogram-{number}")
    if log:
        ax.set_yscale('log')
    ax.set_xlim(low, high)
    ax.axvline(1.0, color='black', lw=0.6, ls=':')
    ax.set_xlabel('gain value')
    ax.set_ylabel('density' + (' (log)' if log else ''))
    ax.set_title(f"gain histograms of {n} movie{'s' if n != 1 else ''}")
    ax.legend(fontsize=8, loc='upper right')
    return fig


def _uniform_histogram(values, low, high, bins):
    """np.histogram's counts for uniform bins on [low, high] (last bin closed), by bincount:
    several times faster on 4K maps."""
    values = values[(values >= low) & (values <= high)]
    index = ((values - low) * (bins / (high - low))).astype(np.int64)
    np.minimum(index, bins - 1, out=index)
    return np.bincount(index, minlength=bins)[:bins]


def _series_from(stats_list, key):
    out = []
    for stats in stats_list:
        value = stats.get('statistics', {}).get(key, stats.get('ratios', {}).get(key, np.nan))
        value = float(value)
        out.append(np.nan if value >= HUGE else value)
    return np.array(out, dtype=float)


def timeline_figure(stats_list, indices=None, thresholds=None, title=None):
    """p2.5 and p97.5, std and the two ratios against movie index (Fig. 2 top).

    ``stats_list``: report dicts in time order; ``indices``: their movie
    indices (default: each dict's ``movie_index``, else 0, 1, ...).
    ``thresholds`` (default: the first dict's, else the paper's) are drawn as
    dashed lines; flagged movies get a red ring on every panel (artists with
    gid ``flagged``) and the first flagged movie a vertical line (gid
    ``first-flagged``): where a reference started to drift.
    """
    stats_list = list(stats_list)
    if indices is None:
        indices = [s.get('movie_index', i) for i, s in enumerate(stats_list)]
    x = np.asarray(indices, dtype=float)
    if thresholds is None:
        given = next((s['thresholds'] for s in stats_list if s.get('thresholds')), None)
        thresholds = Thresholds(**{k: given[k] for k in ('std', 'percentile_ratio', 'max_ratio')}) \
            if given else Thresholds()
    flagged = np.array([bool(s.get('flagged', False)) for s in stats_list], dtype=bool)
    fig = _figure(8.0, 8.5)
    axes = fig.subplots(4, 1, sharex=True)
    marker = 'o' if len(x) <= 200 else '.'
    panels = [
        (axes[0], [('p2.5', 'p2.5', FIRST_COLOUR), ('p50', 'median', '0.5'),
                   ('p97.5', 'p97.5', LAST_COLOUR)], None, 'gain percentiles'),
        (axes[1], [('std', 'std', 'black')], thresholds.std, 'std'),
        (axes[2], [('p97.5/p2.5', 'p97.5 / p2.5', 'black')], thresholds.percentile_ratio,
         'p97.5 / p2.5'),
        (axes[3], [('max/p97.5', 'max / p97.5', 'black')], thresholds.max_ratio, 'max / p97.5'),
    ]
    first_flag = x[flagged].min() if flagged.any() else None
    for ax, curves, threshold, ylabel in panels:
        for key, label, colour in curves:
            y = _series_from(stats_list, key)
            if key == 'p50' and np.all(np.isnan(y)):
                continue
            ax.plot(x, y, marker=marker, ms=3, lw=1.0, color=colour, label=label)
            if flagged.any():
                ring, = ax.plot(x[flagged], y[flagged], 'o', ms=9, mfc='none', mec=FLAG_COLOUR,
                                mew=1.5, zorder=5, label='flagged' if key == curves[-1][0] else None)
                ring.set_gid('flagged')
        if threshold is not None:
            line = ax.axhline(threshold, color=THRESHOLD_COLOUR, ls='--', lw=1.2,
                              label=f"threshold {threshold:g}")
            line.set_gid('threshold')
        if first_flag is not None:
            vline = ax.axvline(first_flag, color=FLAG_COLOUR, ls=':', lw=1.0)
            vline.set_gid('first-flagged')
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc='upper left', ncol=4)
    axes[-1].set_xlabel('movie index (arrival order)')
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    first_text = ''
    if first_flag is not None:
        first_stats = stats_list[int(np.flatnonzero(flagged)[np.argmin(x[flagged])])]
        movie_id = first_stats.get('movie_id')
        first_text = f"; first at movie {int(first_flag)}" + (
            f" (id {movie_id})" if movie_id not in (None, int(first_flag)) else '')
    summary = f"{int(flagged.sum())} of {len(x)} movies flagged{first_text}"
    fig.suptitle((title + ': ' if title else '') + summary)
    return fig


def classify_defects(gain, defects=None, pixel_ratio=2.0, line_ratio=1.2, window=9):
    """A label image of detector defects (codes in :data:`DEFECT_CLASSES`, 0 = fine).

    1: no signal (``defects``); 2 / 3: pixels whose correction is below
    1 / ``pixel_ratio`` (too bright: hot) or above ``pixel_ratio`` (too dim)
    times the median of their row and column neighbourhood; 4 / 5: columns /
    rows whose median correction differs by more than ``line_ratio`` from the
    median of the ``window`` lines around them (a broken or dim line).
    """
    from scipy.ndimage import median_filter
    gain = np.asarray(gain, dtype=np.float64)
    labels = np.zeros(gain.shape, dtype=np.uint8)
    bad = np.zeros(gain.shape, dtype=bool) if defects is None else np.asarray(defects, bool)
    masked = np.where(bad, np.nan, gain)
    with warnings.catch_warnings():  # a dead column is an all-NaN slice: its median is NaN
        warnings.simplefilter('ignore', RuntimeWarning)
        col_median = np.nanmedian(masked, axis=0)
        row_median = np.nanmedian(masked, axis=1)
    for axis, medians, code in ((1, col_median, 4), (0, row_median, 5)):
        filled = np.where(np.isfinite(medians), medians, np.nanmedian(medians))
        local = median_filter(filled, size=min(window, max(1, filled.size)), mode='nearest')
        with np.errstate(all='ignore'):
            ratio = filled / local
        broken = np.isfinite(ratio) & ((ratio > line_ratio) | (ratio < 1 / line_ratio))
        if axis == 1:
            labels[:, broken] = code
        else:
            labels[broken, :] = code
    with np.errstate(all='ignore'):
        expected = np.sqrt(np.outer(np.where(np.isfinite(row_median), row_median, 1.0),
                                    np.where(np.isfinite(col_median), col_median, 1.0)))
        relative = gain / expected
    labels[(relative < 1 / pixel_ratio) & (labels == 0)] = 2
    labels[(relative > pixel_ratio) & (labels == 0)] = 3
    labels[bad] = 1
    return labels


def defect_counts(labels):
    """{class name: pixels} for the classes present in a :func:`classify_defects` image."""
    return {name: int((labels == code).sum()) for code, name, _ in DEFECT_CLASSES
            if (labels == code).any()}


def _bin_max(labels, limit=1024):
    """Shrink a label image for display keeping every defect visible (max over blocks)."""
    factor = int(np.ceil(max(labels.shape) / limit))
    if factor <= 1:
        return labels, 1
    rows, cols = (np.array(labels.shape) + factor - 1) // factor * factor
    padded = np.zeros((rows, cols), labels.dtype)
    padded[:labels.shape[0], :labels.shape[1]] = labels
    # The highest code wins a block; codes are ordered so that lines and hot pixels show.
    return padded.reshape(rows // factor, factor, cols // factor, factor).max(axis=(1, 3)), factor


def defect_figure(labels, title=None):
    """The defect map: a :func:`classify_defects` label image, one colour per class."""
    labels = np.asarray(labels, dtype=np.uint8)
    shown, factor = _bin_max(labels)
    colours = ['#f2f2f2'] + [colour for _, _, colour in DEFECT_CLASSES]
    fig = _figure(6.4, 6.2)
    ax = fig.add_subplot()
    ax.imshow(shown, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(colours) - 0.5,
              interpolation='nearest', extent=(-0.5, shown.shape[1] * factor - 0.5,
                                               shown.shape[0] * factor - 0.5, -0.5))
    # Single pixels would be a screen pixel or less: ring them as well.
    for code, name, colour in DEFECT_CLASSES[:3]:
        rows, cols = np.nonzero(labels == code)
        if 0 < rows.size <= 2000 and rows.size < 0.01 * labels.size:
            rings = ax.scatter(cols, rows, s=30, facecolors='none', edgecolors=colour,
                               linewidths=1.0)
            rings.set_gid(f"defect-{code}")
    counts = defect_counts(labels)
    handles = [Patch(facecolor=colour, edgecolor='0.3', label=f"{name}: {counts[name]} px")
               for code, name, colour in DEFECT_CLASSES if name in counts]
    if not handles:
        handles = [Line2D([], [], ls='none', label='no defects found')]
    ax.legend(handles=handles, fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.08),
              ncol=2, frameon=False)
    ax.set_title(title or 'defect map')
    ax.set_xlim(-0.5, labels.shape[1] - 0.5)
    ax.set_ylim(labels.shape[0] - 0.5, -0.5)
    return fig


# --- the same figures from a loaded run (RunData) -------------------------------------------

def movie_gain_figure(data, index):
    """The gain (or residual gain) image of movie ``index`` of a run."""
    record = data.movie(index)
    gain = record.load_gain()
    if gain is None:
        raise ValueError(f"{record.label}: no gain map in the run folder")
    kind = 'residual gain' if record.kind == 'residual' else 'gain'
    return gain_image_figure(gain, record.load_defects(), title=f"{kind} of {record.label}",
                             stats=record.stats)


def accumulated_figure(data):
    """The running accumulated estimate of a run, or None when there is none."""
    gain, defects = data.load_accumulated()
    if gain is None:
        return None
    return gain_image_figure(gain, defects, title='accumulated estimate',
                             stats=data.accumulated_stats)


def select_movies(records, indices=None, most=8):
    """Records with a gain map to overlay: the given indices, else ``most`` spread evenly
    over the run, always the first and the last."""
    records = [r for r in records if r.gain_path is not None]
    if indices is not None:
        wanted = set(int(i) for i in indices)
        return [r for r in records if r.index in wanted]
    if len(records) <= most:
        return records
    picks = np.unique(np.round(np.linspace(0, len(records) - 1, most)).astype(int))
    return [records[i] for i in picks]


def run_histogram_figure(data, indices=None, most=8):
    records = select_movies(data.movies, indices, most)
    if not records:
        return None
    return histogram_figure([r.load_gain() for r in records], [r.label for r in records],
                            [r.load_defects() for r in records])


def run_timeline_figure(data):
    if not data.movies:
        return None
    return timeline_figure([m.stats for m in data.movies], [m.index for m in data.movies],
                           data.thresholds, title=f"{data.kind} per movie")


def run_defect_figure(data, index=None, source=None):
    """The defect map of a run, or None when there is no map to look at.

    ``source``: 'movie' (movie ``index``), 'accumulated', 'reference' (the
    movies' gain reference) or None: movie ``index`` if given, else the
    reference in residual mode (a residual is flat where the reference
    corrects a defect), else the accumulated estimate, else the last movie.
    """
    if source is None:
        if index is not None:
            source = 'movie'
        elif data.kind == 'residual' and data.reference_path is not None:
            source = 'reference'
        elif data.accumulated_path is not None:
            source = 'accumulated'
        else:
            source = 'movie'
    if source == 'reference':
        gain = data.load_reference()
        if gain is None:
            return None
        return defect_figure(classify_defects(gain), title="defects of the movies' gain reference")
    if source == 'accumulated':
        gain, defects = data.load_accumulated()
        if gain is None:
            return None
        return defect_figure(classify_defects(gain, defects),
                             title='defects of the accumulated estimate')
    if index is None:
        with_gain = data.with_gain()
        if not with_gain:
            return None
        index = with_gain[-1].index
    record = data.movie(index)
    gain = record.load_gain()
    if gain is None:
        return None
    return defect_figure(classify_defects(gain, record.load_defects()),
                         title=f"defects of {record.label}")


def reference_figure(data):
    """The movies' gain reference (residual mode), or None."""
    gain = data.load_reference()
    if gain is None:
        return None
    stats = map_statistics(gain)
    for key in ('flags', 'flagged', 'thresholds'):  # the paper's flags are for residuals
        stats.pop(key)
    return gain_image_figure(gain, title="the movies' gain reference (as used)", stats=stats)
