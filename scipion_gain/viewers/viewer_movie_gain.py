"""Viewer of the "movie gain" protocol (GainProtMovieGain): the list of analysed movies with
their verdicts, any movie's map and power spectrum, the accumulated estimate, histograms,
the time line and the defect maps, in Tk windows.

Movies are chosen and named by their id, as in the run folder, the summary,
warnings.txt and the report. Every plot is one of the plain functions of
:mod:`scipion_gain.report.figures` (shared with ``scipion-gain report`` and the
tests), drawn into a Tk window by :class:`FigureView`; the list is a
:class:`TableView`. The run folder is read again each time a plot is asked
for, so a run still streaming shows its newest movies. Importing this module
needs no display.
"""
import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, ProtocolViewer, View

from ..estimator.verdict import dqe_percent
from ..protocols import GainProtMovieGain
from ..report import figures
from ..report.run_folder import conclusion, format_time, load, ranges

DEFECT_SOURCES = ['accumulated estimate', 'the chosen movie', "the movies' gain reference"]
#: the list's columns: (title, width in pixels)
TABLE_COLUMNS = (('movie', 60), ('file', 150), ('acquired', 80), ('verdict', 70),
                 ('reasons', 420), ('std', 70), ('p97.5/p2.5', 90), ('max/p97.5', 90),
                 ('DQE loss', 75), ('dead px', 65), ('hot px', 65), ('lines', 60))


class ViewerError(Exception):
    """A plot that cannot be drawn (nothing analysed yet, a movie not analysed...)."""


class FigureView(View):
    """A matplotlib Figure (built without pyplot) in a Tk window with the navigation toolbar.

    ``tkParent``: the window to attach to (the viewer form); without one and
    without a Tk root, a root window is made and its main loop runs until it is
    closed.
    """

    def __init__(self, figure, title='', tkParent=None):
        View.__init__(self)
        self.figure = figure
        self.title = title
        self._tkParent = tkParent
        self.window = None
        self.canvas = None

    def show(self):
        import tkinter as tk
        from matplotlib.backends.backend_tkagg import FigureCanvasTkAgg, NavigationToolbar2Tk
        standalone = self._tkParent is None and getattr(tk, '_default_root', None) is None
        window = tk.Tk() if standalone else tk.Toplevel(self._tkParent)
        window.title(self.title or 'gain')
        canvas = FigureCanvasTkAgg(self.figure, master=window)
        toolbar = NavigationToolbar2Tk(canvas, window, pack_toolbar=False)
        toolbar.update()
        toolbar.pack(side=tk.BOTTOM, fill=tk.X)
        canvas.get_tk_widget().pack(side=tk.TOP, fill=tk.BOTH, expand=True)
        canvas.draw()
        self.window, self.canvas = window, canvas
        if standalone:
            window.mainloop()


class TableView(View):
    """The analysed movies in a Tk table (ttk.Treeview) under the run's conclusion;
    flagged movies in red. ``onOpen(movie_id)`` is called on a double click."""

    def __init__(self, title, sentence, columns, rows, flagged, tkParent=None, onOpen=None):
        View.__init__(self)
        self.title, self.sentence = title, sentence
        self.columns, self.rows, self.flagged = columns, rows, flagged
        self._tkParent, self._onOpen = tkParent, onOpen
        self.window = self.tree = self.label = self.details = None

    def show(self):
        import tkinter as tk
        from tkinter import ttk
        standalone = self._tkParent is None and getattr(tk, '_default_root', None) is None
        window = tk.Tk() if standalone else tk.Toplevel(self._tkParent)
        window.title(self.title)
        label = tk.Label(window, text=self.sentence, wraplength=1100, justify=tk.LEFT,
                         anchor='w', padx=8, pady=6,
                         bg='#fde2e2' if any(self.flagged) else '#e3f4e1')
        label.pack(side=tk.TOP, fill=tk.X)
        frame = tk.Frame(window)
        frame.pack(side=tk.TOP, fill=tk.BOTH, expand=True)
        names = [name for name, _ in self.columns]
        tree = ttk.Treeview(frame, columns=names, show='headings',
                            height=min(25, max(5, len(self.rows))))
        for name, width in self.columns:
            tree.heading(name, text=name)
            tree.column(name, width=width, anchor='w' if name in ('file', 'reasons') else 'e',
                        stretch=name == 'reasons')
        tree.tag_configure('flagged', background='#fde2e2')
        for row, flagged in zip(self.rows, self.flagged):
            tree.insert('', 'end', iid=str(row[0]), values=row,
                        tags=('flagged',) if flagged else ())
        scroll = ttk.Scrollbar(frame, orient=tk.VERTICAL, command=tree.yview)
        tree.configure(yscrollcommand=scroll.set)
        scroll.pack(side=tk.RIGHT, fill=tk.Y)
        tree.pack(side=tk.LEFT, fill=tk.BOTH, expand=True)
        if self._onOpen is not None:
            tree.bind('<Double-1>', lambda event: self._open(tree))
        tk.Label(window, text='Click a movie to read its reasons in full below; double-click '
                              'it to see its map.', anchor='w',
                 padx=8).pack(side=tk.BOTTOM, fill=tk.X)
        # the reasons column is cut at the table's width: the chosen movie's are written out
        details = tk.Label(window, text='', wraplength=1100, justify=tk.LEFT, anchor='w',
                           padx=8, pady=4)
        details.pack(side=tk.BOTTOM, fill=tk.X)
        tree.bind('<<TreeviewSelect>>', lambda event: self._showDetails(tree))
        self.window, self.tree, self.label, self.details = window, tree, label, details
        if standalone:
            window.mainloop()

    def details_text(self, movie_id):
        """The chosen movie's line under the table: id, file, verdict and every reason."""
        names = [name for name, _ in self.columns]
        row = next(r for r in self.rows if str(r[0]) == str(movie_id))
        values = dict(zip(names, row))
        text = 'Movie %s (%s): %s' % (values['movie'], values['file'], values['verdict'])
        return text + (': ' + values['reasons'] if values.get('reasons') else '')

    def _showDetails(self, tree):
        selection = tree.selection()
        if selection and self.details is not None:
            self.details.configure(text=self.details_text(selection[0]))

    def _open(self, tree):
        selection = tree.selection()
        if selection:
            self._onOpen(int(selection[0]))


class GainMovieGainViewer(ProtocolViewer):
    """Gains and residual gains of a movie-gain run: the analysed movies with their
    verdicts, any movie's map and power spectrum, the accumulated estimate,
    overlaid histograms, the verdict and the paper's statistics against movie id
    (Sorzano et al. 2018, Fig. 2), and the defect maps."""
    _label = 'viewer movie gain'
    _targets = [GainProtMovieGain]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('displayMovieList', params.LabelParam,
                      label='Analysed movies and their verdicts',
                      help='Every analysed movie: id, file, acquisition time, verdict and '
                           'reasons, the paper\'s statistics and the defects, under the run\'s '
                           'conclusion. Double-click a movie to see its map.')
        form.addParam('movieId', params.IntParam, default=-1, label='Movie (id)',
                      help='The movie\'s id, as in the list, the summary, warnings.txt, the '
                           'report and the run folder\'s file names (movie_000007_...: 7). '
                           '-1: the last analysed movie.')
        form.addParam('displayMovieGain', params.LabelParam,
                      label='Gain (or residual gain) of this movie',
                      help='The map with its colour bar, statistics and verdict. A residual is '
                           'drawn on the fixed scale below, the same for every movie, except a '
                           'flagged one wider than it: its own scale, said on its colour bar; '
                           'a gain is stretched to its own 0.5-99.5 percentiles.')
        form.addParam('displaySpectrum', params.LabelParam,
                      label='Power spectrum of this movie\'s summed frames',
                      help='Log amplitude of the Fourier transform of the sum of the movie\'s '
                           'corrected frames. A gain problem shows as a thin bright line '
                           'through the centre (red arrows point at it); the title gives its '
                           'strength: the power on the axes over that beside them (1: none).')
        form.addParam('residualRange', params.FloatParam, default=5.0,
                      validators=[params.Positive], label='Residual scale (+- %)',
                      help='Residual maps are drawn from 1 - this to 1 + this per cent, the '
                           'same for every movie, so that maps can be compared by eye; a '
                           'flagged map that spreads wider gets its own wider scale.')
        form.addParam('displayAccumulated', params.LabelParam,
                      label='Accumulated estimate',
                      help='The running estimate over all analysed movies '
                           '(extra/accumulated_gain.mrc), with its verdict.')
        form.addParam('histogramMovies', params.StringParam, default='',
                      label='Movies for the histograms (ids)',
                      help='Ids such as "1 5 10-12"; empty: 8 movies spread over the run, '
                           'always the first, the last and the first flagged.')
        form.addParam('displayHistograms', params.LabelParam, label='Histograms',
                      help='Overlaid histograms, one colour per movie in time order, the first '
                           'blue and the last red (paper Fig. 2 bottom); under them, which '
                           'movies are shown and which are left out.')
        form.addParam('displayTimeline', params.LabelParam,
                      label='Verdict and statistics per movie',
                      help='The verdict of every movie on top (red: flagged), its DQE loss, '
                           'then p2.5, '
                           'median and p97.5, std, p97.5/p2.5 and max/p97.5 against movie id '
                           'with the paper\'s thresholds dashed and the values over them '
                           'marked (paper Fig. 2 top).')
        form.addParam('defectSource', params.EnumParam, choices=DEFECT_SOURCES, default=0,
                      display=params.EnumParam.DISPLAY_COMBO, label='Defects of',
                      help='Dead and hot pixels, dead and broken rows and columns, as the run '
                           'found them in the accumulated estimate or in the chosen movie '
                           '(the counts are those of its statistics file), or found by the '
                           'same finder in the movies\' gain reference.')
        form.addParam('displayDefects', params.LabelParam, label='Defect map')

    def _getVisualizeDict(self):
        return {'displayMovieList': self._showMovieList,
                'displayMovieGain': self._showMovieGain,
                'displaySpectrum': self._showSpectrum,
                'displayAccumulated': self._showAccumulated,
                'displayHistograms': self._showHistograms,
                'displayTimeline': self._showTimeline,
                'displayDefects': self._showDefects}

    # ---------------------------------------------------------------- figures
    def getFigure(self, paramName):
        """(title, Figure) for a display parameter; raises ViewerError when it cannot be drawn.

        No window is opened: the tests and scripts use this.
        """
        builders = {'displayMovieGain': self._movieGainFigure,
                    'displaySpectrum': self._spectrumFigure,
                    'displayAccumulated': self._accumulatedFigure,
                    'displayHistograms': self._histogramFigure,
                    'displayTimeline': self._timelineFigure,
                    'displayDefects': self._defectFigure}
        return builders[paramName]()

    def getTable(self):
        """(title, conclusion, columns, rows, flagged) of the analysed movies' list."""
        data = self._runData()
        rows, flagged = [], []
        for record in data.movies:
            verdict = record.verdict
            counts = record.defect_counts() or {}
            lines = sum(counts.get(k, 0) for k in ('dead_rows', 'broken_rows', 'dead_columns',
                                                   'broken_columns'))
            rows.append((record.id, record.file_name, format_time(record.acquired),
                         verdict.word, verdict.reasons_text,
                         '%.4f' % record.value('std'), _ratio(record.value('p97.5/p2.5')),
                         _ratio(record.value('max/p97.5')),
                         '' if verdict.dqe_loss is None else dqe_percent(verdict.dqe_loss),
                         counts.get('dead_pixels', ''), counts.get('hot_pixels', ''),
                         lines if counts else ''))
            flagged.append(verdict.flagged)
        title = 'Analysed movies: %d, flagged: %s' % (len(rows), ranges(data.flagged_ids()))
        return title, conclusion(data), TABLE_COLUMNS, rows, flagged

    def _runData(self):
        from ..io import InputError
        try:
            return load(self.protocol._getPath())
        except InputError:
            raise ViewerError('No movie has been analysed yet.')

    def _residualRange(self):
        value = self.residualRange.get()
        return 0.05 if not value or value <= 0 else value / 100.0

    def _record(self, data):
        movie_id = self.movieId.get()
        if movie_id is None:
            movie_id = -1
        if not data.movies:
            raise ViewerError('No movie has been analysed yet.')
        if movie_id < 0:
            return data.movies[movie_id] if -movie_id <= len(data.movies) else data.movies[-1]
        try:
            return data.movie(movie_id)
        except KeyError:
            raise ViewerError('Movie %d has not been analysed. Analysed movies: %s.'
                              % (movie_id, ranges(data.ids())))

    def _movieGainFigure(self):
        data = self._runData()
        record = self._record(data)
        if record.gain_path is None:
            raise ViewerError('%s: its gain map is missing from the run folder.' % record.label)
        return ('%s of %s' % ('Residual gain' if record.kind == 'residual' else 'Gain',
                              record.label),
                figures.movie_gain_figure(data, record.id, self._residualRange()))

    def _spectrumFigure(self):
        data = self._runData()
        record = self._record(data)
        fig = figures.movie_spectrum_figure(data, record.id)
        if fig is None:
            raise ViewerError('%s: the sum of its frames was not saved (runs before this '
                              'version, or the "per-pixel spread" method).' % record.label)
        return 'Power spectrum of %s' % record.label, fig

    def _accumulatedFigure(self):
        fig = figures.accumulated_figure(self._runData(), self._residualRange())
        if fig is None:
            raise ViewerError('There is no accumulated estimate (the protocol\'s '
                              '"running estimate" option was off).')
        return 'Accumulated estimate', fig

    def _histogramFigure(self):
        data = self._runData()
        text = (self.histogramMovies.get() or '').strip()
        ids = None
        if text:
            try:
                ids = _parseIds(text)
            except ValueError:
                raise ViewerError('Cannot read the movie list "%s": use ids such as '
                                  '"1 5 10-12".' % text)
            missing = sorted(set(ids) - {m.id for m in data.with_gain()})
            if missing:
                raise ViewerError('Not analysed: %s. Analysed movies: %s.'
                                  % (ranges(missing), ranges(data.ids())))
        fig = figures.run_histogram_figure(data, ids)
        if fig is None:
            raise ViewerError('No gain map to draw a histogram of.')
        return 'Gain histograms', fig

    def _timelineFigure(self):
        return 'Verdict and statistics per movie', figures.run_timeline_figure(self._runData())

    def _defectFigure(self):
        data = self._runData()
        source = self.defectSource.get()
        if source == 0:
            _, labels = data.load_accumulated_labels()
            if labels is None:
                raise ViewerError('There is no accumulated estimate: choose a movie or the '
                                  'gain reference.')
            title = 'Defects of the accumulated estimate'
        elif source == 1:
            record = self._record(data)
            labels = record.load_defect_labels()
            if labels is None:
                raise ViewerError('%s: its defect map is missing.' % record.label)
            title = 'Defects of %s' % record.label
        else:
            gain, title = self._referenceMap(data)
            labels = figures.reference_labels(gain)
        return title, figures.defect_figure(labels, title=title)

    def _referenceMap(self, data):
        """The gain reference the movies carry, as the protocol used it."""
        import os
        from ..io import read_gain_reference
        gain = data.load_reference()
        if gain is not None:
            return gain, "Defects of the movies' gain reference %s" % data.reference_path.name
        movies = self.protocol.inputMovies.get()
        path = movies.getGain() if movies is not None else None
        if not path or not os.path.exists(path):
            raise ViewerError('The movies carry no gain reference.')
        gain, _ = read_gain_reference(path)
        return gain, "Defects of the movies' gain reference %s" % os.path.basename(path)

    # ---------------------------------------------------------------- views
    def _views(self, paramName):
        try:
            title, fig = self.getFigure(paramName)
        except ViewerError as exc:
            return [self.errorMessage(str(exc), 'Movie gain')]
        return [FigureView(fig, title, tkParent=self.getTkRoot())]

    def _showMovieList(self, paramName=None):
        try:
            title, sentence, columns, rows, flagged = self.getTable()
        except ViewerError as exc:
            return [self.errorMessage(str(exc), 'Movie gain')]
        return [TableView(title, sentence, columns, rows, flagged, tkParent=self.getTkRoot(),
                          onOpen=self._openMovie)]

    def _openMovie(self, movie_id):
        """A movie chosen in the list: the form's Movie (id) field shows it, so that the
        map, spectrum and defect buttons and the field name the same movie."""
        self.movieId.set(movie_id)
        form = getattr(self, 'formWindow', None)
        if form is not None and 'movieId' in getattr(form, 'widgetDict', {}):
            form.setVarFromParam('movieId')
        for view in self._showMovieGain():
            view.show()

    def _showMovieGain(self, paramName=None):
        return self._views('displayMovieGain')

    def _showSpectrum(self, paramName=None):
        return self._views('displaySpectrum')

    def _showAccumulated(self, paramName=None):
        return self._views('displayAccumulated')

    def _showHistograms(self, paramName=None):
        return self._views('displayHistograms')

    def _showTimeline(self, paramName=None):
        return self._views('displayTimeline')

    def _showDefects(self, paramName=None):
        return self._views('displayDefects')


def _ratio(value):
    return 'inf' if value >= 1e300 else ('' if value != value else '%.4f' % value)


def _parseIds(text):
    """'1 5, 10-12' -> [1, 5, 10, 11, 12]."""
    out = []
    for part in text.replace(',', ' ').split():
        if '-' in part[1:]:
            first, last = part.split('-', 1)
            out.extend(range(int(first), int(last) + 1))
        else:
            out.append(int(part))
    return out
