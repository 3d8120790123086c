"""The Methods paragraph of a gain run, in words, with the parameter values used.

Shared by the Scipion protocol's Methods tab and the HTML report. Plain text:
no citation keys (the reference is written out) and no word starting with an
underscore or a star, which Scipion's text panels would render as italics or
bold. No pyworkflow import.
"""

SORZANO_2018 = ('Sorzano C.O.S. et al. (2018) Blind estimation of DED camera gain in '
                'Electron Microscopy. J. Struct. Biol. 203:90')
AFANASYEV_2015 = ('Afanasyev P. et al. (2015) A posteriori correction of camera '
                  'characteristics from large image data sets. Sci. Rep.')

#: what each method is, in a facility user's words
METHOD_WORDS = {
    'sme': 'smooth midway equalization of the row and column histograms of every frame '
           '(Sorzano et al. 2018)',
    'robust': 'smooth midway equalization of the row and column histograms (Sorzano et al. '
              "2018) applied to the sum of each movie's frames after its specimen (carbon, "
              "gold, holes, ice) was divided out, with each pixel's own gain estimated from "
              'its counts (counting frames)',
    'mean': "the inverse of each pixel's mean over the frames (the idea of RELION's "
            'gain estimation)',
    'std': "the inverse of each pixel's standard deviation over the frames "
           '(Afanasyev et al. 2015)',
}


def _sigma_words(sigma):
    if sigma in (None, 'auto'):
        return ('the width of the Gaussian over neighbouring columns and rows searched per '
                'frame on 0-3 pixels for the least total variation (Eq. 5)')
    return f"a Gaussian width over neighbouring columns and rows of {float(sigma):g} pixels"


def _frames_words(per_movie, step, frames):
    """The frames used, in words that agree with ``frames`` (the count of the analysed
    movies, when known): N per movie asked for uses every (frames in the movie // N)-th
    frame, so a movie shorter than N is used whole."""
    frames = int(frames) if frames else None
    if not per_movie:
        text = 'every frame' if step == 1 else f"every {step}th frame"
        return text + (f" ({frames} frames per movie)" if frames else '')
    if frames is None:
        return (f"at least {per_movie} frames of each movie, evenly spaced over it (all the "
                f"frames of a movie shorter than {2 * per_movie})")
    if frames < per_movie:
        return (f"every frame of each movie ({frames} frames; {per_movie} were asked for, "
                f"more than the movies hold)")
    if frames == per_movie:
        return f"{frames} frames of each movie, evenly spaced over it"
    return (f"{frames} frames of each movie, evenly spaced over it (at least {per_movie} "
            f"were asked for)")


def methods_sentences(settings=None, kind='residual', thresholds=None, movies=None,
                      frames=None, movie_step=None, reference_name=None, verdict_source=None,
                      max_dqe_loss=None):
    """The Methods paragraph as a list of sentences, then the references.

    ``settings``: the stats JSON's ``settings`` (method, reference, sigma,
    iterations, frame_step, frames_per_movie); ``kind``: 'residual' or 'gain';
    ``thresholds``: the paper's thresholds used (an object with std, percentile_ratio,
    max_ratio, or a dict); ``movies``: how many movies were analysed;
    ``frames``: frames used per movie (the words say so, whatever was asked for);
    ``movie_step``: every N-th movie;
    ``reference_name``: the gain reference's file name (residual mode);
    ``verdict_source``: where the verdict came from (estimator.verdict.Verdict.source);
    ``max_dqe_loss``: the verdict's threshold (a fraction of the DQE).
    """
    settings = dict(settings or {})
    method = settings.get('method', 'sme')
    step = int(settings.get('frame_step', 1) or 1)
    what = ('the residual gain of each movie (the correction still missing after its frames '
            'were multiplied by the gain reference' + (f' {reference_name}' if reference_name
                                                         else '') + ')'
            if kind == 'residual' else 'the gain of the detector')
    sentences = [f"We estimated {what} from the movies themselves with "
                 f"{METHOD_WORDS.get(method, method)}."]
    details = []
    if method == 'sme':
        reference = settings.get('reference', 'single')
        details.append('one reference histogram for the whole frame (Eq. 3)' if reference == 'single'
                       else 'a Gaussian-weighted local reference histogram per column and row')
        details.append(_sigma_words(settings.get('sigma', 'auto')))
        iterations = int(settings.get('iterations', 1) or 1)
        details.append(f"{iterations} fixed-point iteration{'s' if iterations != 1 else ''} "
                       f"at most (Eq. 7)")
    details.append(_frames_words(int(settings.get('frames_per_movie', 0) or 0), step, frames))
    if movie_step and int(movie_step) > 1:
        details.append(f"every {int(movie_step)}th movie (the first and last always)")
    sentences.append('Settings: ' + '; '.join(details) + '.')
    if movies:
        sentences.append(f"{movies} movie{'s were' if movies != 1 else ' was'} analysed.")
    if thresholds is not None:
        t = thresholds if isinstance(thresholds, dict) else thresholds.__dict__
        sentences.append(
            "Each map's standard deviation and percentile ratios are reported with the "
            f"paper's thresholds (std > {t['std']:g}, p97.5/p2.5 > {t['percentile_ratio']:g}, "
            f"max/p97.5 > {t['max_ratio']:g}).")
    if verdict_source == 'verdict':
        cost = (f" cost at least {100 * max_dqe_loss:g} % of the DQE at the movie's dose"
                if max_dqe_loss else " cost DQE at the movie's dose")
        sentences.append('A movie was flagged when the map held structure (a column or row '
                         'pattern, a step between readout sectors or rows, isolated pixels) '
                         "beyond noise (measured as the spread between bands of the frame, "
                         "with a specimen's edges left out) and it"
                         f"{cost}.")
    elif verdict_source == 'assessment':
        sentences.append('A movie was flagged when a column or row pattern, a step between '
                         'readout sectors or rows, or isolated pixels stood out of the '
                         "noise, measured as the spread between bands of the frame.")
    elif verdict_source == 'paper flags':
        sentences.append("A movie was flagged when one of the paper's thresholds was exceeded.")
    references = [SORZANO_2018]
    if method == 'std':
        references.append(AFANASYEV_2015)
    return sentences + ['References: ' + '; '.join(references) + '.']
