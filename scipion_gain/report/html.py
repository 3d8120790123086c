"""Write the figures of a run as PNG files and one self-contained HTML page."""
import base64
import html
import io
import os
from pathlib import Path

from .. import __version__
from . import figures
from .run_folder import HUGE_RATIO, RunData, load

MOVIE_IMAGES = 8  # gain images in a report: spread over the run, first, last and first flagged


def save_png(fig, path, dpi=100):
    """Save a figure as PNG atomically (temp file + rename); returns the PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=dpi)
    data = buffer.getvalue()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return data


#: the run-wide figures in page order: (file stem, caption, figure function)
RUN_FIGURES = (
    ('timeline', 'Statistics of every movie against its arrival order, the paper\'s thresholds '
                 'dashed, flagged movies ringed in red (Sorzano et al. 2018, Fig. 2 top).',
     figures.run_timeline_figure),
    ('histograms', 'Gain histograms of movies spread over the run, the first blue and the last '
                   'red (Fig. 2 bottom).', figures.run_histogram_figure),
    ('accumulated_gain', 'The running accumulated estimate over all analysed movies, clipped to '
                         'the 0.5-99.5 percentiles.', figures.accumulated_figure),
    ('gain_reference', 'The gain reference the movies carry, as the run used it (the residuals '
                       'are measured after it).', figures.reference_figure),
    ('defects', 'Defect map: pixels without signal, hot and cold pixels and broken rows and '
                'columns (see its title for the map searched).', figures.run_defect_figure),
)


def report_figures(data, movie_images=MOVIE_IMAGES):
    """The report's figures in page order: [(file stem, caption, Figure)]."""
    out = []
    for stem, caption, make in RUN_FIGURES:
        if stem == 'timeline' and not data.movies:
            continue
        figure = make(data)
        if figure is not None:
            out.append((stem, caption, figure))
    for record in _movies_to_show(data, movie_images):
        # named by the movie's id where it has one, as the run folder's files are
        number = record.movie_id if isinstance(record.movie_id, int) else record.index
        out.append((f"movie_{number:06d}_gain",
                    f"{'Residual gain' if record.kind == 'residual' else 'Gain'} of "
                    f"{record.label}{' (flagged)' if record.flagged else ''}.",
                    figures.movie_gain_figure(data, record.index)))
    return out


def _movies_to_show(data, most):
    chosen = figures.select_movies(data.movies, most=most)
    flagged = [r for r in data.with_gain() if r.flagged]
    if flagged and flagged[0] not in chosen:
        chosen.append(flagged[0])
    return sorted(chosen, key=lambda r: r.index)


def write_report(paths, out_dir, title=None, movie_images=MOVIE_IMAGES):
    """Load a run folder (or stats files), write every figure as PNG and ``index.html``.

    ``paths`` may also be a loaded :class:`RunData`. Returns the path of ``index.html``. The page embeds its images as base64
    data URIs: it can be mailed or copied alone.
    """
    data = paths if isinstance(paths, RunData) else load(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for stem, caption, fig in report_figures(data, movie_images):
        png = save_png(fig, out_dir / f"{stem}.png")
        sections.append((stem, caption, base64.b64encode(png).decode('ascii')))
    page = _page(data, sections, title or _title(paths))
    index = out_dir / 'index.html'
    tmp = out_dir / '.index.html.tmp'
    tmp.write_text(page, encoding='utf-8')
    os.replace(tmp, index)
    return index


def _title(paths):
    if isinstance(paths, RunData):
        paths = [paths.root or 'statistics']
    if isinstance(paths, (str, Path)):
        paths = [paths]
    names = [Path(p).resolve().name for p in paths]
    return 'Gain report: ' + (names[0] if len(names) == 1 else f"{len(names)} inputs")


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 2px 6px; text-align: right; }
th { background: #eee; }
tr.flagged td { background: #fde2e2; }
td.over { color: #b00; font-weight: bold; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 820px; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; }
.warnings { background: #fff4e0; border: 1px solid #e0b060; padding: 0.5em; }
"""

COLUMNS = ('mean', 'std', 'min', 'max', 'p2.5', 'p50', 'p97.5', 'p97.5/p2.5', 'max/p97.5')
FLAG_OF = {'std': 'std', 'p97.5/p2.5': 'percentile_ratio', 'max/p97.5': 'max_ratio'}


def _page(data, sections, title):
    e = html.escape
    thresholds = data.thresholds
    flagged = data.flagged_indices()
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p>{len(data.movies)} movie(s) analysed ({e(data.kind)}); "
             f"<b>{len(flagged)}</b> flagged"
             + (f", the first at movie {flagged[0]}" if flagged else '')
             + f". Thresholds: std &gt; {thresholds.std:g}, p97.5/p2.5 &gt; "
               f"{thresholds.percentile_ratio:g}, max/p97.5 &gt; {thresholds.max_ratio:g} "
               f"(Sorzano et al. 2018). Gain maps multiply raw frames and have mean 1.</p>"]
    if data.root is not None:
        parts.append(f"<p>Run folder: <code>{e(str(Path(data.root).resolve()))}</code></p>")
    if data.warnings or data.notes:
        parts.append("<div class='warnings'><b>Warnings</b><ul>"
                     + ''.join(f"<li>{e(w)}</li>" for w in data.warnings + data.notes)
                     + "</ul></div>")
    parts.append("<h2>Figures</h2>")
    for stem, caption, encoded in sections:
        parts.append(f"<figure id='{e(stem)}'><img alt='{e(stem)}' "
                     f"src='data:image/png;base64,{encoded}'>"
                     f"<figcaption>{e(caption)} <i>({e(stem)}.png)</i></figcaption></figure>")
    parts.append("<h2>Movies</h2><table><tr><th>index</th><th>id</th><th>kind</th>"
                 + ''.join(f"<th>{e(c)}</th>" for c in COLUMNS)
                 + "<th>frames</th><th>flags</th><th>movie</th></tr>")
    for record in data.movies:
        flags = record.stats.get('flags', {})
        cells = []
        for column in COLUMNS:
            value = record.value(column)
            over = flags.get(FLAG_OF.get(column, ''), False)
            text = 'inf' if value >= HUGE_RATIO else ('' if value != value else f"{value:.4f}")
            cells.append(f"<td{' class=over' if over else ''}>{text}</td>")
        raised = ', '.join(name for name, on in flags.items() if on)
        movie_file = record.movie_file or ''
        parts.append(f"<tr{' class=flagged' if record.flagged else ''}>"
                     f"<td>{record.index}</td><td>{e(str(record.movie_id if record.movie_id is not None else ''))}</td>"
                     f"<td>{e(record.kind)}</td>{''.join(cells)}"
                     f"<td>{e(str(record.stats.get('frames', '')))}</td><td>{e(raised)}</td>"
                     f"<td style='text-align:left'>{e(os.path.basename(str(movie_file)))}</td></tr>")
    parts.append("</table>")
    parts.append(f"<p style='font-size:0.8em;color:#777'>scipion-gain {e(__version__)}</p>"
                 "</body></html>\n")
    return '\n'.join(parts)
