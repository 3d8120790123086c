"""Step 3 of the robust estimate (:mod:`.specimen`): the sums SME equalizes, from counts
thinned to one level.

Counting sums are thinned: each count kept with probability (the specimen model's low
percentile) / model, so that every pixel holds Poisson counts of one rate times its gain
(thinning a Poisson count by p gives a Poisson count of rate times p). A draw is random;
the sums are not drawn but their expectation over all draws (:func:`_expected_sums`): the
SME's tables of one draw (:func:`drawn_sums`, thinned to at most THINNED_COUNTS counts a
pixel so that its levels do not grow with the frames) applied to each pixel's binomial
law (:func:`expected_thinning`). Pure NumPy, on the host, a block of rows at a time.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .arrays import row_blocks
from .sme import scaled_count_tables, sme_frame


#: counting sums are thinned to one level (binomial), not divided: the SME's tables come
#: from one draw of at most THINNED_COUNTS counts per pixel on average (its levels, hence
#: the SME's pair tables, do not grow with the frames) and the sums are their expectation
#: over all draws (:func:`_expected_sums`); where the tables cannot be had, the sums of
#: THINNING_DRAWS draws
THINNED_COUNTS = 16.0


THINNING_DRAWS = 8


#: the SME's tables of a thinned sum are the mean of the tables of up to TABLE_DRAWS draws
#: (:func:`table_draws`): one draw's tables carry its thinning noise (a line's histogram of
#: the thinned counts, not of all its counts), which grows as the sum is thinned further
#: (dark carbon); the mean of D draws keeps 1 / D of it (measured, 512 px, exact reference,
#: carbon of T 0.3 over 45 %: residual std 1.44x the same movie's without the carbon with
#: one draw, 1.28x with 4, 1.24x with 8; thinning the movie without carbon to the same
#: level costs it 1.36x)
TABLE_DRAWS = 4


#: the weight of a stand-in pixel in a session's sums (one movie's map is the ratio: unchanged)
STAND_IN_WEIGHT = 1e-3


def drawn_sums(total, counts, model, level, dim, lines, rng, frames, sme):
    """(numerator, denominator, sigmas) summed over frames or draws: the frames of
    ``frames()`` (a callable, or None: the sum itself), each divided by the model, or
    THINNING_DRAWS thinning draws of a counting sum whose SME tables are not to be had
    (:func:`expected_thinning`); ``lines`` (not None): the dim pixels as stand-ins."""
    reference, sigma, sigma_grid = sme
    stand_ins = lines is not None
    pairs = [(total, counts)] if frames is None else frames()
    thinning = frames is None and counts is not None
    if thinning:
        # the stand-ins are drawn from the float64 frame: only they need it whole
        pairs = _thinned(total, whole_counts(counts), model, _thinning_target(model, dim),
                         THINNING_DRAWS, rng, np.float64 if stand_ins else np.float32)
    numerator = np.zeros(total.shape)
    denominator = np.zeros(total.shape)
    sigmas = []
    chosen = sigma
    for corrected, recorded in pairs:
        if stand_ins:
            flat = np.asarray(corrected, np.float64) * (1.0 if thinning else level / model[:])
            flat, recorded = _stand_ins(flat, recorded, dim, lines, rng)
            flat = flat.astype(np.float32)
        elif thinning:
            flat = corrected          # already float32, one level: the factor is 1
        else:
            flat = _flattened_float32(corrected, level, model)
        ties = None if recorded is None else np.asarray(recorded, np.float32)
        del corrected, recorded       # 4K frames: each one held no longer than it is used
        equalized, pair = sme_frame(flat, reference, chosen, sigma_grid, np, recorded=ties)
        if thinning and reference == 'single':
            # Eq. 3's single reference averages the smoothed lines of Eq. 2 over all lines:
            # sigma only reweights the few lines at the frame's borders, the search's
            # total variations differ by noise and its choice goes from draw to draw
            # (measured: 0 to 3 on the 8 draws of one sum); the first draw's is kept,
            # and the others skip the search and its pair tables
            chosen = pair
        numerator += flat
        denominator += equalized
        sigmas.append(pair)
        del flat, ties, equalized
    if thinning:                      # the mean draw: the scale of the expected sums
        numerator /= THINNING_DRAWS
        denominator /= THINNING_DRAWS
    return numerator, denominator, sigmas


def _filled_tables(table):
    """A scaled table (lines, K) of :func:`.sme.scaled_count_tables`, halved (Eq. 6 is the
    mean of the two directions), each absent block's entry (0) taken from the nearest
    present block below it in its line (above, where none is below): a value that this
    draw did not hold in a line maps as its neighbours in value do. Key 0 (a zero's mapped
    value) is kept as it is. float64."""
    filled = np.array(table, np.float64) * 0.5
    body = filled[:, 1:]
    if body.shape[1] == 0:
        return filled
    present = body != 0
    index = np.where(present, np.arange(body.shape[1]), -1)
    below = np.maximum.accumulate(index, axis=1)
    below = np.where(below < 0, np.argmax(present, axis=1)[:, None], below)
    filled[:, 1:] = np.take_along_axis(body, below, axis=1)
    return filled


def _expected_sums(whole, total, model, target, columns, rows, own=None):
    """Eq. 7's two sums of a thinned sum, averaged over all its thinning draws (the limit
    of infinitely many draws), per pixel: (E[F], E[SME(F)]).

    A pixel of N counts (``whole``; ``total`` the sum, N times the pixel's factor u)
    thinned by p = target / model holds v ~ Binomial(N, p): E[F] = p N u. Given the
    tables of one draw (``columns``, ``rows``: :func:`.sme.scaled_count_tables`), the SME
    maps v to v u (C[c, v] + R[r, v]) / 2 and a zero to (C[c, 0] + R[r, 0]) / 2, so
    E[SME(F)] = sum_v P(v) of that (:func:`_expected_block`), over the levels up to
    ``top``: no more than the counts of all but 0.1 % of the pixels (v <= N) or than
    their expected thinned counts' 99.9th percentile plus 5 standard deviations (the
    mass above: 3e-7). The few pixels with mass above ``top`` (a hot or a bright pixel)
    map that mass at their expected count's key. The average of D draws scatters about
    this by (1 - p) / (D p) of the counts' own variance, and more at a pixel whose draws
    are a rare low tail (1 count where 18 were expected maps 2 to 6 times off, a draw of
    0 or 2 further): measured, 3 draws instead of 8 took a movie's R^2 from 0.77 to 0.70
    through 0.1 % of its pixels; this expectation gives it 0.79, in 1 s at 4096 x 4096
    against 8 s for 8 draws."""
    columns, rows = _filled_tables(columns), _filled_tables(rows)
    levels = columns.shape[1]
    numerator, denominator = np.empty(whole.shape), np.empty(whole.shape)
    sample = whole[::7, ::7]
    thinned = sample * np.clip(target / model[::7, ::7], 0.0, 1.0)
    expected = float(np.percentile(thinned, 99.9)) if sample.size else 0.0
    top = int(min(levels - 1, np.ceil(float(np.percentile(sample, 99.9)) if sample.size else 0),
                  np.ceil(expected + 5.0 * np.sqrt(expected))))
    scaled = (columns * np.arange(levels), rows * np.arange(levels))   # v C[c, v] / 2

    # the sum is its own counts (a raw movie; ``own``, when the caller compared them): each
    # pixel's factor below is 1 (0 where it counted nothing, and so are its sums), and its
    # products are left out: the same sums
    if own is None:
        own = total is whole or bool(np.array_equal(total, whole))

    def work(block):
        counts = whole[block].astype(np.float64)
        share = np.clip(target / model[block], 0.0, 1.0)
        unit = None if own else np.where(counts > 0, total[block] / np.maximum(counts, 1.0),
                                         0.0)
        mean = share * counts
        numerator[block] = mean if own else mean * unit
        zero, mapped = _expected_block(counts, share, scaled[0], scaled[1][block], top)
        zero *= columns[:, 0][None, :] + rows[block, 0][:, None]
        # the mass above the top level (v > top: only where N > top) at the expected key
        over = np.nonzero(counts > top)
        if over[0].size and levels > 1:
            key = np.clip(np.rint(mean[over]), 1, levels - 1).astype(np.intp)
            spent = _kept_below(counts[over], share[over], top)
            mapped[over] += (np.maximum(mean[over] - spent, 0.0)
                             * (columns[over[1], key] + rows[over[0] + block.start, key]))
        if not own:
            mapped *= unit
        mapped += zero
        denominator[block] = mapped

    # blocks in threads: NumPy's element-wise loops release the GIL, and each block
    # writes its own rows
    with ThreadPoolExecutor(max_workers=EXPECTED_THREADS) as pool:
        list(pool.map(work, row_blocks(whole.shape[0], EXPECTED_ROWS)))
    return numerator, denominator


def _expected_block(counts, share, scaled_columns, scaled_rows, top):
    """Over a block of rows: (P(0), sum_{v=1..top} P(v) v (C[c, v] + R[r, v]) / 2) for
    v ~ Binomial(counts, share) (:func:`_chances`: P(v) times a scale, which is taken off
    the tables' entries); a pixel kept whole (p = 1) has P(N) = 1. In place, a few buffers
    of the block. Once few pixels are still in play (:func:`_chances` with ``compact``),
    the levels add only at theirs: the same terms added in the same order, the same sums."""
    chances = _chances(counts, share, top, compact=True)
    certain, zero = next(chances)
    mapped, step = np.zeros(counts.shape), np.empty(counts.shape)
    playing = None
    for value, (chance, scale, where) in enumerate(chances, 1):
        column_terms = scaled_columns[:, value] / scale
        row_terms = scaled_rows[:, value] / scale
        if where is None:
            np.add(column_terms[None, :], row_terms[:, None], out=step)
            step *= chance
            mapped += step
            continue
        if playing is None:       # from here on the pixels in play only (where: the first)
            playing, sums = where, mapped.ravel()[where]
            row, col = np.divmod(where, counts.shape[1])
            gathered, term = np.empty(where.size), np.empty(where.size)
        live = slice(0, where.size)
        np.take(column_terms, col[live], out=gathered[live], mode='clip')
        np.take(row_terms, row[live], out=term[live], mode='clip')
        gathered[live] += term[live]
        gathered[live] *= chance
        sums[live] += gathered[live]
    if playing is not None:
        mapped.ravel()[playing] = sums
    if certain.any():                 # v = N exactly, where N is within the levels
        whole = certain & (counts >= 1) & (counts <= top)
        row, col = np.nonzero(whole)
        value = counts[whole].astype(np.intp)
        mapped[whole] = scaled_columns[col, value] + scaled_rows[row, value]
    return zero, mapped


def _kept_below(counts, share, top):
    """sum_{v=1..top} P(v) v of v ~ Binomial(counts, share) (:func:`_chances`): the counts a
    pixel keeps within the levels, asked only where N > top (a hot or bright pixel)."""
    chances = _chances(counts, share, top)
    certain, _ = next(chances)
    spent = np.zeros(counts.shape)
    for value, (chance, scale, _) in enumerate(chances, 1):
        spent += chance * (value / scale)
    if certain.any():
        whole = certain & (counts >= 1) & (counts <= top)
        spent[whole] = counts[whole]
    return spent


#: :func:`_chances` with ``compact`` goes on with the pixels still in play once they are
#: at most this share of the block (the gathers cost about what the passes over the
#: whole block they replace do at 0.6; at 4 frames from level 6 of 12 on)
COMPACT_SHARE = 1.0 / 3.0


def _chances(counts, share, top, compact=False):
    """The binomial law of v ~ Binomial(counts, share) level by level: first (the pixels kept
    whole, p = 1; P(0)), then (P(v) s, s, None) for v = 1..top, one buffer updated in place
    by the recurrence P(v) = P(v - 1) (N - v + 1) / v p / (1 - p) from P(0) = (1 - p)^N (0
    from v = N + 1 on; 0 throughout where p = 1). The scale s is v! (the 1 / v of each step
    left to the caller, who takes it off the tables' entries instead of every pixel: one
    pass over the block less a level), brought back to 1 before it nears float64's range.

    ``compact``: once the pixels in play at level v (N >= v, p < 1: the others' P(v) is 0)
    are at most COMPACT_SHARE of the block, the recurrence goes on with theirs only, in
    falling order of their counts, and each level with the first of them whose counts
    reach it: (P(v) s of those, s, their flat indices), the same products in the same
    order."""
    certain = share >= 1.0 - 1e-9
    odds = np.where(certain, 0.0, share / np.where(certain, 1.0, 1.0 - share))
    chance = np.where(certain, 0.0, (1.0 - share) ** counts)
    yield certain, np.where(certain, counts == 0, chance)
    step = np.empty(counts.shape)
    scale = 1.0
    order = reaching = None
    if compact:   # pixels in play at each level: rank top - min(N, top), top + 1 out of play
        rank = (top - np.minimum(counts, top)).astype(np.uint8 if top < 255 else np.uint16)
        rank[certain | (counts < 1)] = top + 1
        rank = rank.ravel()
        reaching = np.cumsum(np.bincount(rank, minlength=top + 2))   # [top - v]: N >= v
    for value in range(1, top + 1):
        if reaching is not None and order is None and (
                reaching[top - value] <= COMPACT_SHARE * counts.size):
            order = np.argsort(rank, kind='stable')[:reaching[top - value]]
            counts, odds = counts.ravel()[order], odds.ravel()[order]
            chance, step = chance.ravel()[order], np.empty(order.size)
        live = slice(None) if order is None else slice(0, int(reaching[top - value]))
        np.subtract(counts[live], value - 1, out=step[live])
        step[live] *= odds[live]
        chance[live] *= step[live]
        scale *= value
        if scale > 1e200:
            chance[live] *= 1.0 / scale
            scale = 1.0
        yield chance[live], scale, None if order is None else order[live]


#: rows of a 4K frame handled at once where a float64 intermediate is rounded to float32
ROWS_PER_BLOCK = 256


#: rows of a 4K frame per block of the expected sums' loop over levels (its few buffers
#: stay in the processor's cache)
EXPECTED_ROWS = 32


EXPECTED_THREADS = 2


def _flattened_float32(values, level, model):
    """values x level / model in float32: the float64 product rounded once (as a float64
    frame cast to float32 would be), a block of rows at a time, so that no float64 frame
    is held."""
    flat = np.empty(np.shape(values), np.float32)
    for rows in row_blocks(flat.shape[0], ROWS_PER_BLOCK):
        flat[rows] = np.asarray(values[rows], np.float64) * (level / model[rows])
    return flat


def whole_counts(counts):
    """The counts as int32 (a pixel's counts, well below 2^31): the array itself when it is."""
    if counts.dtype == np.int32 and int(counts.min()) >= 0:
        return counts
    whole = np.empty(counts.shape, np.int32)
    for rows in row_blocks(counts.shape[0], ROWS_PER_BLOCK):
        whole[rows] = np.rint(np.maximum(counts[rows], 0))
    return whole


def _thinning_target(model, dim):
    """Counts per pixel a thinned sum holds on average: the model's 1st percentile outside
    ``dim`` (every other pixel thinned down to it), at most THINNED_COUNTS."""
    # on every 3rd pixel of every 3rd row: the model is a median over 20 pixels
    sample, outside = model[::3, ::3], ~dim[::3, ::3]
    target = (float(np.percentile(sample[outside], 1)) if outside.any()
              else float(np.median(sample)))
    return min(target, THINNED_COUNTS)


def _thinned(total, whole, model, target, draws, rng, dtype=np.float32, own=False):
    """(corrected, counts) pairs of the sum thinned to one level: each count kept with
    probability target / model (binomial thinning: Poisson(rate) thinned by p is
    Poisson(rate p)), so that every pixel outside the dim ones holds Poisson counts of one
    rate times its gain, whatever the specimen let through. Dividing by the model
    instead scales the noise with it (a carbon pixel's flattened counts spread twice as
    wide as the ice's, and Eq. 4 maps that spread into the map). ``draws`` draws of the
    counts ``whole`` (int32).

    Both frames of a pair come as ``dtype``: the draw times the reference's factor (sum
    over counts) in float64, rounded once; ``own`` (the sum is its own counts: the factor
    is 1): the draw itself, as both. Each draw is THINNING_STREAMS bands of rows, each
    drawn on its own thread from its own stream (``rng.spawn``: independent child
    generators, the same binomial law; NumPy's generator releases the GIL while it draws,
    so the bands run on as many cores), a block of rows at a time, the probabilities and
    factors recomputed per block, so that no float64 frame is held between draws. The
    streams are fixed in number, not taken from the machine: the same draw everywhere."""
    height = total.shape[0]
    bands = row_blocks(height, -(-height // THINNING_STREAMS))
    for _ in range(draws):
        corrected = np.empty(total.shape, dtype)
        kept = corrected if own else np.empty(total.shape, dtype)
        streams = rng.spawn(len(bands))

        def band(stream, part):
            for rows in row_blocks(part.stop - part.start, DRAW_ROWS):
                rows = slice(part.start + rows.start, part.start + rows.stop)
                recorded = whole[rows]
                drawn = stream.binomial(recorded, np.clip(target / model[rows], 0.0, 1.0))
                if own:
                    corrected[rows] = drawn
                    continue
                unit = np.where(recorded > 0, total[rows] / np.maximum(recorded, 1), 0.0)
                kept[rows] = drawn
                corrected[rows] = drawn * unit

        with ThreadPoolExecutor(max_workers=len(bands)) as pool:
            list(pool.map(band, streams, bands))
        yield corrected, kept
        del corrected, kept


#: a thinning draw is made in this many bands of rows, each from its own random stream on
#: its own thread (:func:`_thinned`), DRAW_ROWS rows at a time (a block's float64 and int64
#: temporaries, 2 MB each at 4096 columns, are held by each thread at once; the stream is
#: the same whatever the block: the generator draws pixel after pixel)
THINNING_STREAMS = 2
DRAW_ROWS = 64


def expected_thinning(total, counts, model, level, dim, lines, rng, reference, sigma,
                      sigma_grid):
    """(numerator, denominator, sigmas) of a counting sum thinned to one level, as the
    expectation over all thinning draws (:func:`_expected_sums`) from the mean SME tables
    of :func:`table_draws` draws (Eqs. 1-6; the sigma search of Eq. 5 on the first, whose sigmas
    the others take); ``lines`` (not None): the dim pixels enter the draws as stand-ins
    (:func:`_stand_ins`). None where the SME's fast path does not take a draw (then the
    caller averages THINNING_DRAWS draws). ``level``: the model's typical level
    (:meth:`.specimen.CellModel.typical`)."""
    whole = whole_counts(counts)
    target = _thinning_target(model, dim)
    # the sum is its own counts (a raw movie): compared once, for the draws and the sums
    same = total is counts or bool(np.array_equal(total, whole))
    own = lines is None and same
    dtype = np.float32 if lines is None else np.float64
    columns, rows, pair = [], [], None
    draws = table_draws(target / max(level, 1e-12))
    # the two directions' tables on two threads. Their pair tables of the sigma search
    # ((lines - 1) x levels^2 int64 and their sum's copy, 30-60 MB each at 4096, under the
    # allocator's mmap threshold) stay resident in a thread's own malloc heap after they are
    # freed: the command runs with one heap for all threads (commands.common.
    # tune_allocator), without which the estimate's peak rose by 75 MB (raw 4096 x 4096 x 10)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for corrected, kept in _thinned(total, whole, model, target, draws, rng, dtype, own):
            if lines is not None:
                corrected, kept = _stand_ins(corrected, kept, dim, lines, rng)
                corrected = corrected.astype(np.float32)
            tables = scaled_count_tables(corrected, np.asarray(kept, np.float32), reference,
                                         sigma if pair is None else pair, sigma_grid, np,
                                         executor=pool)
            del corrected, kept
            if tables is None:
                return None
            columns.append(tables[0])
            rows.append(tables[1])
            pair = pair or tables[3]
    numerator, denominator = _expected_sums(whole, total, model, target,
                                            _mean_table(columns), _mean_table(rows), same)
    return numerator, denominator, [pair]


def table_draws(share):
    """How many thinning draws' tables to average when the typical pixel keeps ``share`` of
    its counts: one draw's table noise is that of share x N counts, of which 1 - share
    (relative to share) is the thinning's own, and D draws keep 1 / D of that part. As many
    as bring the thinning's part to at most half the counts' own, 2 (1 - share) / share
    (one draw down to share 2 / 3: no cost where nothing dark is thinned to), at most
    TABLE_DRAWS."""
    share = min(max(float(share), 1e-3), 1.0)
    return int(min(TABLE_DRAWS, max(1, np.ceil(2.0 * (1.0 - share) / share - 1e-9))))


def _mean_table(tables):
    """The mean of scaled tables (lines, K) of several draws, each filled
    (:func:`_filled_tables`) over the levels of the widest, at their scale (not halved)."""
    levels = max(table.shape[1] for table in tables)
    return 2.0 * np.mean([_filled_tables(np.pad(table, ((0, 0), (0, levels - table.shape[1]))))
                          for table in tables], axis=0)


def _stand_ins(flat, recorded, dim, lines, rng):
    """The dim pixels of a flattened frame replaced by stand-ins with the histogram of the
    other pixels (drawn with a fixed seed) at their lines' level: a block of equal values
    would take a band of ranks and be mapped across that band of the reference. With
    whole counts (``recorded``), the stand-ins are drawn counts times their lines' factor,
    so the frame stays counts x factors (the ties of Eq. 4: ranking flattened counts
    without their ties re-creates the flattening)."""
    count = int(dim.sum())
    relative = lines[dim] / float(lines[~dim].mean())
    if recorded is None:
        predicted = lines * (float(flat[~dim].sum()) / float(lines[~dim].sum()))
        flat[dim] = predicted[dim] * rng.choice((flat / predicted)[~dim], size=count)
        return flat, None
    recorded = np.array(recorded, np.float64)
    seen = ~dim & (recorded > 0)
    factor = float(np.median(flat[seen] / recorded[seen])) if seen.any() else 1.0
    drawn = rng.choice(recorded[~dim], size=count)
    recorded[dim] = drawn
    flat[dim] = drawn * factor * relative
    return flat, recorded
