"""Write the report of a run: one HTML page, its figures embedded, per-movie PNGs beside it.

The page (``index.html``) says first what to do: a header with the project,
the protocol, the session's time span and the date, then the conclusion
sentence (run_folder.conclusion), then the figures at the page's width (time
line, histograms, power spectra, maps), a thumbnail of every analysed movie's
map (all on one residual scale) linking to its full-size figure, the table of
every analysed movie with its verdict and the paper's statistics, and the
Methods paragraph. The run-wide figures and the thumbnails are embedded
(base64), so the page alone can be mailed; the full-size per-movie figures
are PNG files beside it. PNGs are palette-quantised and deflated (Pillow):
a few hundred kB for a 10-movie run.
"""
import base64
import functools
import html
import io
import time
from pathlib import Path

import numpy as np

from .. import __version__
from . import figures
from .methods import methods_sentences
from ..estimator.verdict import HUGE_RATIO, dqe_percent, paper_over
from ..io.atomic import write_bytes, write_text
from .run_folder import RunData, conclusion, format_time, load, ranges

#: full-size per-movie figures in a report: every movie up to this many, else spread + onset
MOVIE_IMAGES = 60
#: cross strengths are computed for every movie with a saved sum up to this many movies
CROSS_FOR_ALL = 200
THUMBNAIL = 176


def _png_bytes(fig, dpi=100):
    """The figure as a compact PNG: rendered, quantised to a 256-colour palette (the maps'
    colour maps have 256 entries), deflated at the highest level."""
    from PIL import Image
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=dpi)
    return _compress(Image.open(io.BytesIO(buffer.getvalue())))


def _compress(image):
    from PIL import Image
    image = image.convert('RGB').quantize(colors=256, method=Image.Quantize.FASTOCTREE,
                                          dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format='png', optimize=True, compress_level=9)
    return out.getvalue()


def save_png(fig, path, dpi=100):
    """Save a figure as a compact PNG atomically, at once (the report command stages its
    pages in a folder and moves them into place itself); returns the bytes."""
    data = _png_bytes(fig, dpi)
    write_bytes(path, data, now=True)
    return data


def _map_thumbnail(gain, residual_range, size=THUMBNAIL):
    """A small picture of a map alone (no axes): residuals on the fixed scale, gains on
    their percentiles; block means, so that a 4K map costs little."""
    from matplotlib import colormaps
    from PIL import Image
    gain = np.asarray(gain, dtype=np.float32)
    factor = max(1, int(np.ceil(max(gain.shape) / size)))
    rows, cols = (np.array(gain.shape) // factor) * factor
    small = gain[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor).mean((1, 3))
    if residual_range is not None:
        low, high, cmap = 1 - residual_range, 1 + residual_range, figures.RESIDUAL_CMAP
    else:
        (low, high), cmap = figures.clip_limits(small), 'gray'
    scaled = np.clip((small - low) / max(high - low, 1e-12), 0, 1)
    rgba = (colormaps[cmap](scaled) * 255).astype(np.uint8)
    return _compress(Image.fromarray(rgba))


def _b64(data):
    return base64.b64encode(data).decode('ascii')


#: the run-wide figures in page order: (file stem, caption, figure function, full width)
RUN_FIGURES = (
    ('timeline', "Every analysed movie against its id: the verdict on top (red crosses and a "
                 "shaded band: flagged), the DQE loss the verdict weighs (the share of the "
                 "detector's DQE that the found structure costs at the movie's dose) with the "
                 "verdict's threshold, then the paper's statistics with its thresholds "
                 "dashed and the values over them marked with triangles (Sorzano et al. 2018, "
                 "Fig. 2 top). Acquisition times on the top axis.",
     figures.run_timeline_figure, True),
    ('histograms', 'Histograms of the residual or gain maps, one colour per movie in time '
                   'order (Fig. 2 bottom).',
     lambda data: figures.run_histogram_figure(data, with_note=False), True),
)


def _movies_to_draw(data, most):
    """Movies whose full-size figure is drawn: all up to ``most``, else spread + the onset."""
    with_gain = data.with_gain()
    if most is None or len(with_gain) <= most:
        return with_gain
    chosen = figures.select_movies(with_gain, most=most)
    from .run_folder import onset
    first = onset(data.movies) or next((m for m in with_gain if m.flagged), None)
    if first is not None and first not in chosen and first.gain_path is not None:
        chosen.append(first)
    return sorted(chosen, key=lambda r: r.id)


def report_figures(data, movie_images=MOVIE_IMAGES, residual_range=figures.RESIDUAL_RANGE):
    """The report's figures in page order: [(file stem, caption, Figure, full width)]."""
    planned = (make() for make in figure_plan(data, movie_images, residual_range))
    return [entry for entry in planned if entry is not None]


def figure_plan(data, movie_images=MOVIE_IMAGES, residual_range=figures.RESIDUAL_RANGE,
                spectra=None):
    """The report's figures in page order, each not drawn yet: a list of functions that
    draw one and return (file stem, caption, Figure, full width), or None where there is
    nothing to draw. A report draws, writes and clears one at a time, so that no two
    figures' 4K images are held at once. ``spectra`` (a dict): gets the numbers of each
    drawn movie's :class:`~..estimator.spectrum.Spectrum` by id (without its picture), for
    the page's table."""
    plan = [functools.partial(_run_figure, data, *entry) for entry in RUN_FIGURES]
    plan += [functools.partial(_spectrum_figure, data, record, spectra)
             for record in figures.spectrum_movies(data)]
    plan += [functools.partial(_accumulated_figure, data, residual_range),
             functools.partial(_reference_figure, data),
             functools.partial(_defect_figure, data, 'accumulated')]
    if data.reference_path is not None:
        plan.append(functools.partial(_defect_figure, data, 'reference'))
    plan += [functools.partial(_movie_figure, data, record, residual_range)
             for record in _movies_to_draw(data, movie_images)]
    return plan


def _run_figure(data, stem, caption, make, wide):
    figure = make(data)
    if figure is None:
        return None
    if stem == 'histograms':
        caption += ' ' + figures.histogram_note(data, figures.select_movies(data.movies))
    return stem, caption, figure, wide


def _spectrum_figure(data, record, spectra=None):
    fig = figures.movie_spectrum_figure(data, record.id)
    if spectra is not None:   # the page's table of cross strengths takes it from here
        spectra[record.id] = fig._cross
    return (f"movie_{record.id:06d}_spectrum",
            figures.spectrum_caption(fig._cross, record.label, record.verdict.word,
                                     record.kind),
            fig, False)


def _accumulated_figure(data, residual_range):
    accumulated = figures.accumulated_figure(data, residual_range)
    if accumulated is None:
        return None
    own = accumulated.axes[1].get_gid() == 'own-scale'
    return ('accumulated_gain', 'The running estimate over the analysed movies' +
            ((', flagged, on its own wider scale (on its colour bar).' if own else
              f" on the fixed residual scale 1 \u00b1 {100 * residual_range:g} %.")
             if data.kind == 'residual' else ', stretched to its percentiles.'),
            accumulated, False)


def _reference_figure(data):
    reference = figures.reference_figure(data)
    if reference is None:
        return None
    return ('gain_reference', 'The gain reference the movies carry, as the run used it '
                              '(the residuals are measured after it), stretched to its '
                              'percentiles.', reference, False)


def _defect_figure(data, source):
    defects = figures.run_defect_figure(data, source=source)
    if defects is None:
        return None
    if source == 'accumulated':
        return ('defects', 'Defects of the accumulated estimate, from the label image the '
                           'run wrote (dead and hot pixels, dead and broken rows and '
                           'columns); the counts are those of its statistics file.',
                defects, False)
    return ('reference_defects', "Defects of the gain reference, found by the same "
                                 "finder on its map. A reference sets the pixels "
                                 "that never record to 1, so its dead pixels cannot "
                                 "be seen in it: the movies' maps show them.",
            defects, False)


def _movie_figure(data, record, residual_range):
    return (f"movie_{record.id:06d}_gain",
            f"{'Residual gain' if record.kind == 'residual' else 'Gain'} of "
            f"{record.label} ({record.verdict.word}"
            f"{', on its own scale' if record.flagged and record.kind == 'residual' else ''}"
            f").",
            figures.movie_gain_figure(data, record.id, residual_range), None)


def _cross_strengths(data, shown_ids, known=None):
    """Each movie's cross-strength numbers by id (:func:`~..estimator.spectrum.cross_numbers`;
    all up to CROSS_FOR_ALL, else those shown); ``known``: those the figures already
    computed."""
    from ..estimator.spectrum import cross_numbers
    with_sum = [m for m in data.movies if m.sum_path is not None]
    if len(with_sum) > CROSS_FOR_ALL:
        with_sum = [m for m in with_sum if m.id in shown_ids]
    out = dict(known or {})
    for record in with_sum:
        if record.id in out:
            continue
        try:
            out[record.id] = cross_numbers(record.load_sum(), mask=record.load_defects())
        except (ValueError, OSError) as exc:
            data.notes.append(f"{record.label}: no power spectrum ({exc})")
    return out


def write_report(paths, out_dir, title=None, movie_images=MOVIE_IMAGES,
                 residual_range=figures.RESIDUAL_RANGE, project=None, protocol=None,
                 progress=None):
    """Load a run folder (or stats files), write ``index.html`` and the figures beside it.

    ``paths`` may also be a loaded :class:`RunData`. ``project`` / ``protocol``
    name them in the header (default: from the run folder's path).
    ``residual_range``: the residual maps' fixed scale, 1 +- this.
    ``progress(done, total)``: called after each figure and thumbnail is written.
    Returns the path of ``index.html``.
    """
    data = paths if isinstance(paths, RunData) else load(paths)
    if project:
        data.project = project
    if protocol:
        data.protocol = protocol
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections, movie_pages = [], {}
    known_spectra = {}
    plan = figure_plan(data, movie_images, residual_range, known_spectra)
    with_gain = data.with_gain()
    total = len(plan) + len(with_gain)
    for done, draw in enumerate(plan, start=1):
        entry = draw()
        if entry is not None:
            stem, caption, fig, wide = entry
            png = save_png(fig, out_dir / f"{stem}.png", dpi=130 if wide else 100)
            fig.clear()   # its images go now, not at the next cyclic collection
            if wide is None:  # a per-movie figure: a file beside the page, linked from its thumbnail
                movie_pages[stem] = f"{stem}.png"
            else:
                sections.append((stem, caption, _b64(png), wide))
        if progress:
            progress(done, total)
    thumbnails = {}
    for done, record in enumerate(with_gain, start=len(plan) + 1):
        gain = record.load_gain()
        residual = residual_range if record.kind == 'residual' else None
        thumbnails[record.id] = _b64(_map_thumbnail(gain, residual))
        stem = f"movie_{record.id:06d}_gain"
        if stem not in movie_pages:  # not drawn in full: the map alone at full size
            target = out_dir / f"movie_{record.id:06d}_map.png"
            write_bytes(target, _map_thumbnail(gain, residual, size=max(gain.shape)),
                        now=True)
            movie_pages[stem] = target.name
        if progress:
            progress(done, total)
    shown = {m.id for m in figures.spectrum_movies(data)}
    spectra = _cross_strengths(data, shown, known_spectra)
    page = _page(data, sections, thumbnails, movie_pages, spectra,
                 title or _title(data), residual_range)
    index = out_dir / 'index.html'
    write_text(index, page, now=True)
    return index


def _title(data_or_paths):
    if isinstance(data_or_paths, RunData):
        data = data_or_paths
        if data.project or data.protocol:  # the header's rows name the protocol and its run
            return 'Gain check: ' + (data.project or data.protocol)
        data_or_paths = [data.root or 'statistics']
    paths = data_or_paths
    if isinstance(paths, (str, Path)):
        paths = [paths]
    names = [Path(p).resolve().name for p in paths]
    return 'Gain check: ' + (names[0] if len(names) == 1 else f"{len(names)} inputs")


STYLE = """
body { font-family: sans-serif; margin: 1.2em 2em; color: #222; max-width: 1500px; }
h1 { margin-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.85em; }
table.head td { border: none; text-align: left; padding: 1px 12px 1px 0; }
table.movies th, table.movies td { border: 1px solid #bbb; padding: 2px 6px; text-align: right;
                                   white-space: nowrap; }
table.movies td.text, table.movies th.text { text-align: left; }
table.movies td.reasons { min-width: 24em; white-space: normal; }
th { background: #eee; }
tr.flagged td { background: #fde2e2; }
td.over { color: #b35900; font-weight: bold; }
.conclusion { font-size: 1.15em; padding: 0.6em 0.9em; margin: 0.8em 0; border-radius: 4px; }
.conclusion.bad { background: #fde2e2; border: 2px solid #d62728; }
.conclusion.good { background: #e3f4e1; border: 2px solid #2ca02c; }
figure { margin: 0.6em 0; }
figure.wide { width: 100%; }
figure img { width: 100%; border: 1px solid #ddd; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 0.8em; }
figcaption { font-size: 0.95em; color: #333; }
.thumbs { display: flex; flex-wrap: wrap; gap: 6px; }
.thumb { width: 120px; text-align: center; font-size: 0.75em; overflow-wrap: anywhere; }
.thumb img { width: 116px; height: 116px; object-fit: contain; border: 2px solid #2ca02c; }
.thumb.flagged img { border-color: #d62728; }
.warnings { background: #fff4e0; border: 1px solid #e0b060; padding: 0.5em; }
.methods { font-size: 0.9em; color: #333; }
"""

#: what a column of the movie table holds, shown when the pointer rests on its header
HEADER_TITLES = {
    'DQE loss': "the share of the detector's DQE that the structure found costs at the "
                "movie's dose (the verdict's measure)",
    'cross': "power on the axes of the movie's power spectrum over the power beside them: "
             "1 without a gain problem, a column or row pattern raises it",
    'frames': 'frames of the movie used'}
#: the movie table's columns of words, aligned left (numbers right)
TEXT_COLUMNS = ('file', 'verdict', 'reasons')
COLUMNS = (('std', 'std'), ('p2.5', 'p2.5'), ('p97.5', 'p97.5'),
           ('p97.5/p2.5', 'percentile_ratio'), ('max/p97.5', 'max_ratio'))


def _cell(value, over=None):
    text = 'inf' if value >= HUGE_RATIO else ('' if value != value else f"{value:.4f}")
    if over is None:
        return f"<td>{text}</td>"
    return (f"<td class=over title=\"over the paper's threshold {over[1]:g}\">"
            f"{text}&#9650;</td>")


#: header rows whose values are HTML already (paths in <code>, escaped where built)
HTML_ROWS = ('Run folder', 'Gain reference')


def _header(data, e):
    rows = []
    if data.project:
        rows.append(('Project', data.project))
    if data.protocol and data.root is not None and \
            (Path(data.root) / 'extra' / 'check.json').exists():
        rows.append(('Made by', 'scipion-gain check'))   # a folder of the command, no protocol
    elif data.protocol:
        rows.append(('Protocol', data.protocol))
    if data.kind == 'residual' and data.reference_path is not None:
        rows.append(('Gain reference', f"<code>{e(str(data.reference_path))}</code> "
                                       f"(as the run used it; the residuals are measured after "
                                       f"it)"))
    span = data.session_span()
    if span:
        first, last = span
        day = time.strftime('%Y-%m-%d', time.localtime(first))
        rows.append(('Session', f"{day} {format_time(first)} to {format_time(last)} "
                                f"(acquisition times of the movie files)"))
    rows.append(('Report written', time.strftime('%Y-%m-%d %H:%M')))
    if data.root is not None:
        rows.append(('Run folder', f"<code>{e(str(Path(data.root).resolve()))}</code>"))
    return ("<table class=head>" + ''.join(
        f"<tr><td><b>{e(k)}</b></td><td>{v if k in HTML_ROWS else e(v)}</td></tr>"
        for k, v in rows) + "</table>")


def _page(data, sections, thumbnails, movie_pages, spectra, title, residual_range):
    e = html.escape
    t = data.thresholds
    flagged = data.flagged_ids()
    verdicts = [m.verdict for m in data.movies]
    source = verdicts[0].source if verdicts else 'verdict'
    mode = ('residual gain: frames multiplied by the movies\' gain reference, so a right '
            'reference leaves a flat map' if data.kind == 'residual' else 'gain estimate')
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1>", _header(data, e)]
    sentence = conclusion(data)
    parts.append(f"<p class='conclusion {'bad' if flagged else 'good'}' id='conclusion'>"
                 f"{e(sentence)}</p>")
    accumulated = data.accumulated_verdict
    parts.append(
        f"<p>{len(data.movies)} movie{'s' if len(data.movies) != 1 else ''} analysed "
        f"({e(mode)}); <b>{len(flagged)}</b> flagged"
        + (f" (movie{'s' if len(flagged) != 1 else ''} {e(ranges(flagged))})" if flagged
           else '') + '.'
        + (f" Accumulated estimate: {e(accumulated.sentence)}." if accumulated else '')
        + f" The paper's statistics are shown with its thresholds (std &gt; {t.std:g}, "
          f"p97.5/p2.5 &gt; {t.percentile_ratio:g}, max/p97.5 &gt; {t.max_ratio:g}); "
          f"values over them are marked &#9650;. Gain maps multiply raw frames and have "
          f"mean 1.</p>")
    if data.warnings or data.notes:
        items = data.warnings + data.notes
        parts.append(f"<details class='warnings' {'open' if len(items) <= 12 else ''}>"
                     f"<summary><b>Warnings ({len(items)})</b></summary><ul>"
                     + ''.join(f"<li>{e(w)}</li>" for w in items) + "</ul></details>")
    parts.append("<h2>Figures</h2>")
    wide = [s for s in sections if s[3]]
    rest = [s for s in sections if not s[3]]
    for stem, caption, encoded, _ in wide:
        parts.append(_figure_html(stem, caption, encoded, 'wide', e))
    parts.append("<div class=grid>")
    for stem, caption, encoded, _ in rest:
        parts.append(_figure_html(stem, caption, encoded, '', e))
    parts.append("</div>")
    if thumbnails:
        scale = (f"on one fixed scale, 1 \u00b1 {100 * residual_range:g} % (blue below 1, red "
                 f"above), the same for every movie; a flagged map wider than that saturates "
                 f"here, and its full-size figure has its own wider scale"
                 if data.kind == 'residual' else 'each stretched to its own percentiles')
        parts.append(f"<h2>Every analysed movie</h2><p>Maps {e(scale)}; red frame: flagged. "
                     f"Click for the full-size figure.</p><div class=thumbs>")
        for record in data.movies:
            if record.id not in thumbnails:
                continue
            link = movie_pages.get(f"movie_{record.id:06d}_gain", '')
            parts.append(f"<div class='thumb{' flagged' if record.flagged else ''}' "
                         f"id='thumb-{record.id}'><a href='{e(link)}'>"
                         f"<img alt='movie {record.id}' src='data:image/png;base64,"
                         f"{thumbnails[record.id]}'></a><br>movie {record.id}<br>"
                         f"{e(record.file_name)}</div>")
        parts.append("</div>")
    parts.append(_table(data, spectra, e))
    first = data.movies[0] if data.movies else None
    if first is not None:
        sentences = methods_sentences(first.stats.get('settings'), data.kind, t,
                                      movies=len(data.movies), frames=first.stats.get('frames'),
                                      verdict_source=source,
                                      max_dqe_loss=(first.stats.get('verdict') or {}).get(
                                          'max_dqe_loss'))
        parts.append("<h2>Methods</h2><p class=methods>" + e(' '.join(sentences)) + "</p>")
    parts.append(f"<p style='font-size:0.8em;color:#777'>scipion-gain {e(__version__)}</p>"
                 "</body></html>\n")
    return '\n'.join(parts)


def _figure_html(stem, caption, encoded, css, e):
    return (f"<figure class='{css}' id='{e(stem)}'><img alt='{e(stem)}' "
            f"src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{e(caption)} <i>({e(stem)}.png)</i></figcaption></figure>")


def _table(data, spectra, e):
    has_defects = any(m.defect_counts() for m in data.movies)
    has_loss = any(m.verdict.dqe_loss is not None for m in data.movies)
    head = ['movie', 'file', 'acquired', 'verdict', 'reasons']
    if has_loss:
        head.append('DQE loss')
    head += [name for name, _ in COLUMNS]
    if has_defects:
        head += ['dead px', 'hot px', 'rows', 'columns']
    if spectra:
        head.append('cross')  # explained by the header's title
    head.append('frames')
    parts = ["<h2>Movies</h2><table class=movies id=movies><tr>"
             + ''.join(f"<th{' class=text' if h in TEXT_COLUMNS else ''}"
                  f"{f' title={chr(39)}{e(HEADER_TITLES[h])}{chr(39)}' if h in HEADER_TITLES else ''}>"
                  f"{e(h)}</th>" for h in head) + "</tr>"]
    for record in data.movies:
        verdict = record.verdict
        over = paper_over(record.stats)
        cells = [f"<td>{record.id}</td>", f"<td class=text>{e(record.file_name)}</td>",
                 f"<td>{e(format_time(record.acquired))}</td>",
                 f"<td class=text>{verdict.word}</td>",
                 f"<td class='text reasons' title='{e(verdict.reasons_text)}'>"
                 f"{e(verdict.reasons_text)}</td>"]
        if has_loss:
            loss = verdict.dqe_loss
            cells.append(f"<td>{'' if loss is None else dqe_percent(loss)}</td>")
        for name, flag in COLUMNS:
            cells.append(_cell(record.value(name), over.get(flag)))
        if has_defects:
            counts = record.defect_counts() or {}
            cells += [f"<td>{counts.get('dead_pixels', '')}</td>",
                      f"<td>{counts.get('hot_pixels', '')}</td>",
                      f"<td>{_lines(counts, 'rows')}</td>",
                      f"<td>{_lines(counts, 'columns')}</td>"]
        if spectra:
            found = spectra.get(record.id)
            cells.append(f"<td>{'' if found is None else f'{found.cross_strength:.2f}'}</td>")
        cells.append(f"<td>{e(str(record.stats.get('frames', '')))}</td>")
        parts.append(f"<tr{' class=flagged' if record.flagged else ''} id='movie-{record.id}'>"
                     + ''.join(cells) + "</tr>")
    parts.append("</table>")
    return '\n'.join(parts)


def _lines(counts, what):
    dead, broken = counts.get(f'dead_{what}', 0), counts.get(f'broken_{what}', 0)
    if not dead and not broken:
        return '0' if f'dead_{what}' in counts else ''
    return ', '.join(p for p in (f"{dead} dead" if dead else '',
                                 f"{broken} broken" if broken else '') if p)
