"""The orientation check of GainProtMovieGain (issue 6), a mixin of the protocol.

When the movies carry a gain and ``estimateOrientation`` is on, the decision
is taken once, by whichever thread first can (a movie step before its
residual, or the main loop once the input closed): as soon as the first
``orientationMovies`` movies (arrival order) have arrived, or the input closed
with fewer. Their gain is estimated without the reference (inverse per-pixel
mean, see ``checks.orient_reference``) and compared with the 8 rotations/flips
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

from ..io import InputError, read_image, write_mrc
from . import checks
from .run_files import read_json, write_json

OUTPUT_ORIENTED = 'orientedGain'


class OrientationCheck:
    """Mixin: needs the protocol's _loadReference, _residualMode, _device,
    _resetAccumulator, _loadOutputSet, _publish, listOfMovies/streamClosed and
    the attributes _orientLock, _orientation, _oriented, _lock."""

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
        reference = self._loadReference()
        decision = {'movies': list(movies), 'oriented': None}
        try:
            found, oriented, frames = checks.orient_reference(
                movies, reference, *self._frameSelection(), device=self._device(0))
        except (InputError, ValueError) as exc:
            message = str(exc).splitlines()[0]
            self.warning('Gain orientation could not be checked (%s): the movies\' gain is '
                         'used as it is.' % message)
            decision['error'] = message
            write_json(self._orientationPath(), decision)
            return decision
        decision['orientation'] = found.to_dict()
        decision['frames'] = int(frames)
        t = found.transform
        what = 'Gain orientation (%d movies, %d frames): %s' % (len(movies), frames,
                                                                 found.message)
        if not found.confident:
            self.info(what + '. The movies\' gain is used as it is.')
        elif oriented is None:
            self.info(what + '. The movies\' gain is already in the movies\' orientation.')
        else:
            path = self._orientedPath()
            write_mrc(path, oriented, label='scipion-gain oriented reference (%s%s); multiplies '
                                            'raw frames; mean 1'
                                            % (t.motioncor2, ', 1/x' if found.inverted else ''))
            decision['oriented'] = os.path.abspath(path)
            self.info(what)
            self.info('The movies\' gain needs MotionCor2 %s, RELION %s%s. The oriented '
                      'reference %s is used from now on and attached to the output movies.'
                      % (t.motioncor2, t.relion,
                         ' and is stored inverted (1/x), which neither can undo'
                         if found.inverted else '', path))
            self._resetAccumulator('the gain reference was oriented')
        info = read_json(self._getExtraPath('gain_reference.json'))
        info['orientation'] = decision['orientation']
        info['oriented'] = decision['oriented']
        write_json(self._getExtraPath('gain_reference.json'), info)
        write_json(self._orientationPath(), decision)  # last: marks the decision taken
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
