"""The movies' gain reference in GainProtMovieGain and its orientation check, a mixin.

The reference is read once per run (run_folder.reference.prepare_reference,
turned as ``gainTransform`` asks) and the file in use is decided in one place
(run_folder.reference.reference_file).

The orientation check: when the movies carry a gain and ``estimateOrientation`` is on, the decision
is taken once, by whichever thread first can (a movie step before its
residual, or the main loop once the input closed): as soon as the first
``orientationMovies`` movies (arrival order) have arrived, or the input closed
with fewer. Their gain is estimated without the reference (inverse per-pixel
mean, see ``run_folder.reference.orient_reference``) and compared with the 8 rotations/flips
of the reference, direct and inverted. A confident match that changes
something writes extra/oriented_gain.mrc (a correction, mean 1; never the
user's file), which the following residuals use, ``outputMovies`` carries and
the ``orientedGain`` output holds; extra/orientation.json records the decision
(its presence means taken, so a resumed run does not decide again) and
extra/gain_reference.json the transform. Otherwise the reference stays as it is.
"""
import os

import numpy as np

import pyworkflow.object as pwobj
from pwem.objects import Image, SetOfImages

from .. import movie_job
from ..estimator.orientation import TRANSFORMS
from ..io import InputError, read_image
from ..run_folder.logs import read_json
from ..run_folder.reference import (decide_orientation, orientation_hint, prepare_reference,
                                    reference_file)

OUTPUT_ORIENTED = 'orientedGain'


class OrientationCheck:
    """Mixin: needs the protocol's inputMovies, estimateResidualGain, gainTransform,
    estimateOrientation, orientationMovies, _runFolder, _device, _resetAccumulator,
    _loadOutputSet, _publish, listOfMovies/streamClosed and the attributes _reference,
    _orientLock, _orientation, _oriented, _lock."""

    def _residualMode(self):
        return bool(self.estimateResidualGain.get() and self.inputMovies.get().getGain())

    def _loadReference(self):
        """The movies' gain as used, read once per run (run_folder.reference)."""
        with self._lock:
            if self._reference is None:
                source = self.inputMovies.get().getGain()
                fresh = not os.path.exists(self._runFolder().reference_copy)
                self._reference = prepare_reference(self._runFolder(), source,
                                                    self._gainTransform(), say=self.info)
                hint = self._orientationHint(os.path.abspath(source)) if fresh else None
                if hint:
                    self.info(hint)
            return self._reference

    def _checkDark(self):
        """Read the movies' dark reference once, before any movie (every movie job reads
        it again): an unreadable dark fails the run with one line, not every movie."""
        path = self.inputMovies.get().getDark()
        if not path:
            return
        source = os.path.abspath(path)
        try:
            dark = movie_job.load_dark(source, self._gainTransform().to_dict())
        except InputError as exc:
            raise InputError('movies\' dark reference: %s' % exc) from None
        for note in dark.notes:
            self.info('Movies\' dark %s: %s' % (source, note))

    def _gainTransform(self):
        """The rotation/flip asked for the gain reference (an orientation.Transform)."""
        return TRANSFORMS[self.gainTransform.get() or 0]

    def _orientationHint(self, gainPath):
        """A hint when movies and gain are of formats RELION and Xmipp read with
        different Y orientations (run_folder.reference.orientation_hint)."""
        movies = self.inputMovies.get()
        try:
            movie = movies.getFirstItem().getFileName()
        except Exception:
            return None
        finally:
            # With the set's mapper already open (the base class iterates the set when
            # it inserts the steps), getFirstItem leaves its SELECT unfinished: a read
            # lock on the import's movies.sqlite that blocks a streaming import from
            # ever writing it again (seen when started on a set of 2 movies or more).
            movies.close()
        return orientation_hint(movie, gainPath)

    def _attachedGain(self):
        """The gain for outputMovies: the oriented reference, or the movies' own (or
        our flipped/normalised copy) when they have one, else the running estimate;
        None until known."""
        inputGain = self.inputMovies.get().getGain()
        if inputGain and self._orientationWanted():
            if not os.path.exists(self._orientationPath()):
                return None  # wait for the orientation check
            if os.path.exists(self._orientedPath()):
                return os.path.abspath(self._orientedPath())
        if inputGain:
            inUse = reference_file(self._runFolder(), oriented=False)
            if inUse is not None:
                return os.path.abspath(inUse[0])
            if self.gainTransform.get():
                return None  # the turned copy is not written yet
            return os.path.abspath(inputGain)
        estimate = self._runFolder().estimated_gain
        return os.path.abspath(estimate) if os.path.exists(estimate) else None

    def _referenceFile(self, kind):
        """(path, reader) of the reference of ``kind`` for a job: the oriented one, the
        run's turned/normalised copy, or the user's file read as a gain reference."""
        inUse = reference_file(self._runFolder(), oriented=(kind == 'oriented'))
        if inUse is None:
            return os.path.abspath(self.inputMovies.get().getGain()), 'gain_reference'
        return inUse

    def _orientationWanted(self):
        return bool(self._residualMode() and self.estimateOrientation.get())

    def _movieReference(self):
        """(reference, kind) for a movie's residual: the oriented reference once the
        orientation check wrote one ('oriented'), else the movies' gain ('as given')."""
        reference = self._loadReference()
        if self._orientationWanted():
            decision = self._orientationDecision(wait=True)
            if decision is not None and decision.get('oriented'):
                return self._orientedReference(), 'oriented'
        return reference, 'as given'

    def _orientedReference(self):
        with self._lock:
            if self._oriented is None:
                self._oriented = np.ascontiguousarray(read_image(self._orientedPath())[0],
                                                      dtype=np.float32)
            return self._oriented

    def _orientationMovies(self):
        """Files of the first orientationMovies movies (arrival order), or None while
        fewer have arrived and the input is still open."""
        movies = sorted(getattr(self, 'listOfMovies', []), key=lambda m: m.getObjId())
        wanted = max(1, self.orientationMovies.get())
        if len(movies) < wanted and not (getattr(self, 'streamClosed', False) and movies):
            return None
        return [m.getFileName() for m in movies[:wanted]]

    def _orientationDecision(self, wait=True):
        """The orientation decision (a dict; taken once, by whichever thread first can:
        a movie step, or the main loop once the input closed), or None if not yet."""
        if self._orientation is not None:
            return self._orientation
        if not self._orientLock.acquire(blocking=wait):
            return None
        try:
            if self._orientation is None and os.path.exists(self._orientationPath()):
                self._orientation = read_json(self._orientationPath())  # a resumed run
            if self._orientation is None:
                movies = self._orientationMovies()
                if movies is not None:
                    self._orientation = self._decideOrientation(movies)
            return self._orientation
        finally:
            self._orientLock.release()

    def _decideOrientation(self, movies):
        decision, lines = decide_orientation(self._runFolder(), movies, self._loadReference(),
                                             *self._frameSelection(), device=self._device(0))
        for level, line in lines:
            getattr(self, level)(line)
        if decision['oriented']:
            self._resetAccumulator('the gain reference was oriented')
        return decision

    def _updateOrientedOutput(self):
        """Output the oriented reference (one image) once it exists."""
        path = self._orientedPath()
        if self.hasAttribute(OUTPUT_ORIENTED) or not os.path.exists(path):
            return
        decision = read_json(self._orientationPath())
        imageSet = self._loadOutputSet(SetOfImages, 'oriented_gain.sqlite')
        image = Image(location=os.path.abspath(path))
        image.setSamplingRate(imageSet.getSamplingRate())
        transform = decision['orientation']['transform']
        image._gainRotGain = pwobj.Integer(transform['rotation'])
        image._gainFlipGain = pwobj.Integer(transform['flip'])
        image._gainInverted = pwobj.Boolean(bool(decision['orientation']['inverted']))
        imageSet.append(image)
        self._publish(OUTPUT_ORIENTED, imageSet, pwobj.Set.STREAM_CLOSED)

    def _orientationPath(self):
        return self._getExtraPath('orientation.json')

    def _orientedPath(self):
        return self._getExtraPath('oriented_gain.mrc')
