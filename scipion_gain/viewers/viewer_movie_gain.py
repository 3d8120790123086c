"""Viewer of the "movie gain" protocol (GainProtMovieGain): gain images, histograms,
the percentile time line and the defect map, in Tk windows.

Every plot is one of the plain functions of :mod:`scipion_gain.report.figures`
(shared with ``scipion-gain report`` and the tests), drawn into a Tk window by
:class:`FigureView`. The run folder is read again each time a plot is asked
for, so a run still streaming shows its newest movies. Importing this module
needs no display.
"""
import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, ProtocolViewer, View

from ..protocols import GainProtMovieGain
from ..report import figures
from ..report.run_folder import load

DEFECT_SOURCES = ['accumulated estimate', 'the chosen movie', "the movies' gain reference"]


class ViewerError(Exception):
    """A plot that cannot be drawn (nothing analysed yet, an index not analysed...)."""


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


class GainMovieGainViewer(ProtocolViewer):
    """Gains and residual gains of a movie-gain run: any movie's map, the accumulated
    estimate, overlaid histograms, the statistics against movie index with the
    paper's thresholds (Sorzano et al. 2018, Fig. 2), and the defect map."""
    _label = 'viewer movie gain'
    _targets = [GainProtMovieGain]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label='Visualization')
        form.addParam('movieIndex', params.IntParam, default=0, label='Movie (arrival index)',
                      help='0-based index of an analysed movie in arrival order (the x axis '
                           'of the time line). -1 is the last analysed movie.')
        form.addParam('displayMovieGain', params.LabelParam,
                      label="Gain (or residual gain) of this movie",
                      help='The map, clipped to its 0.5-99.5 percentiles, with a colour bar '
                           'and its statistics; red when the paper\'s flags are raised.')
        form.addParam('displayAccumulated', params.LabelParam,
                      label='Accumulated estimate',
                      help='The running estimate over all analysed movies '
                           '(extra/accumulated_gain.mrc).')
        form.addParam('histogramMovies', params.StringParam, default='',
                      label='Movies for the histograms',
                      help='Indices such as "0 5 10-12"; empty: 8 movies spread over the run, '
                           'always the first and the last.')
        form.addParam('displayHistograms', params.LabelParam, label='Histograms',
                      help='Overlaid histograms, first movie blue, last red (paper Fig. 2 '
                           'bottom).')
        form.addParam('displayTimeline', params.LabelParam,
                      label='Percentiles, std and ratios per movie',
                      help='p2.5, median and p97.5, std, p97.5/p2.5 and max/p97.5 against '
                           'movie index, the thresholds dashed and flagged movies ringed in '
                           'red (paper Fig. 2 top).')
        form.addParam('defectSource', params.EnumParam, choices=DEFECT_SOURCES, default=0,
                      display=params.EnumParam.DISPLAY_COMBO, label='Defects of',
                      help='Pixels without signal, hot and cold pixels, broken rows and '
                           'columns, found in the accumulated estimate, in the chosen '
                           'movie\'s map, or in the gain reference the movies carry.')
        form.addParam('displayDefects', params.LabelParam, label='Defect map')

    def _getVisualizeDict(self):
        return {'displayMovieGain': self._showMovieGain,
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
                    'displayAccumulated': self._accumulatedFigure,
                    'displayHistograms': self._histogramFigure,
                    'displayTimeline': self._timelineFigure,
                    'displayDefects': self._defectFigure}
        return builders[paramName]()

    def _runData(self):
        from ..io import InputError
        try:
            return load(self.protocol._getPath())
        except InputError:
            raise ViewerError('No movie has been analysed yet.')

    def _record(self, data):
        index = self.movieIndex.get()
        if index is None:
            index = 0
        analysed = [m.index for m in data.movies]
        if index < 0:
            return data.movies[index] if -index <= len(analysed) else data.movies[-1]
        if index not in analysed:
            raise ViewerError('Movie %d has not been analysed. Analysed movies: %s.'
                              % (index, _ranges(analysed)))
        return data.movie(index)

    def _movieGainFigure(self):
        data = self._runData()
        record = self._record(data)
        if record.gain_path is None:
            raise ViewerError('%s: its gain map is missing from the run folder.' % record.label)
        return ('%s of %s' % ('Residual gain' if record.kind == 'residual' else 'Gain',
                              record.label), figures.movie_gain_figure(data, record.index))

    def _accumulatedFigure(self):
        fig = figures.accumulated_figure(self._runData())
        if fig is None:
            raise ViewerError('There is no accumulated estimate (the protocol\'s '
                              '"accumulate" option was off).')
        return 'Accumulated estimate', fig

    def _histogramFigure(self):
        data = self._runData()
        text = (self.histogramMovies.get() or '').strip()
        indices = None
        if text:
            try:
                indices = _parseIndices(text)
            except ValueError:
                raise ViewerError('Cannot read the movie list "%s": use indices such as '
                                  '"0 5 10-12".' % text)
            missing = sorted(set(indices) - {m.index for m in data.with_gain()})
            if missing:
                raise ViewerError('Not analysed: %s. Analysed movies: %s.'
                                  % (_ranges(missing), _ranges([m.index for m in data.movies])))
        fig = figures.run_histogram_figure(data, indices)
        if fig is None:
            raise ViewerError('No gain map to draw a histogram of.')
        return 'Gain histograms', fig

    def _timelineFigure(self):
        return 'Statistics per movie', figures.run_timeline_figure(self._runData())

    def _defectFigure(self):
        data = self._runData()
        source = self.defectSource.get()
        if source == 0:
            gain, defects = data.load_accumulated()
            if gain is None:
                raise ViewerError('There is no accumulated estimate: choose a movie or the '
                                  'gain reference.')
            title = 'Defects of the accumulated estimate'
        elif source == 1:
            record = self._record(data)
            gain, defects = record.load_gain(), record.load_defects()
            if gain is None:
                raise ViewerError('%s: its gain map is missing.' % record.label)
            title = 'Defects of %s' % record.label
        else:
            gain, defects, title = self._referenceMap(data)
        return title, figures.defect_figure(figures.classify_defects(gain, defects), title=title)

    def _referenceMap(self, data):
        """The gain reference the movies carry, as the protocol used it."""
        import os
        from ..io import read_gain_reference
        gain = data.load_reference()
        if gain is not None:
            return gain, None, "Defects of the movies' gain reference %s" % data.reference_path.name
        movies = self.protocol.inputMovies.get()
        path = movies.getGain() if movies is not None else None
        if not path or not os.path.exists(path):
            raise ViewerError('The movies carry no gain reference.')
        gain, _ = read_gain_reference(path)
        return gain, None, "Defects of the movies' gain reference %s" % os.path.basename(path)

    # ---------------------------------------------------------------- views
    def _views(self, paramName):
        try:
            title, fig = self.getFigure(paramName)
        except ViewerError as exc:
            return [self.errorMessage(str(exc), 'Movie gain')]
        return [FigureView(fig, title, tkParent=self.getTkRoot())]

    def _showMovieGain(self, paramName=None):
        return self._views('displayMovieGain')

    def _showAccumulated(self, paramName=None):
        return self._views('displayAccumulated')

    def _showHistograms(self, paramName=None):
        return self._views('displayHistograms')

    def _showTimeline(self, paramName=None):
        return self._views('displayTimeline')

    def _showDefects(self, paramName=None):
        return self._views('displayDefects')


def _parseIndices(text):
    """'0 5, 10-12' -> [0, 5, 10, 11, 12]."""
    out = []
    for part in text.replace(',', ' ').split():
        if '-' in part[1:]:
            first, last = part.split('-', 1)
            out.extend(range(int(first), int(last) + 1))
        else:
            out.append(int(part))
    return out


def _ranges(indices):
    """[0, 1, 2, 5] -> '0-2, 5'."""
    indices = sorted(set(int(i) for i in indices))
    if not indices:
        return 'none'
    parts, start, previous = [], indices[0], indices[0]
    for value in indices[1:] + [None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        parts.append(str(start) if start == previous else '%d-%d' % (start, previous))
        if value is not None:
            start = previous = value
    return ', '.join(parts)
