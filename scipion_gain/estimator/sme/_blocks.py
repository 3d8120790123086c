"""Block sums shared by the sorted and the counted implementations."""

from ._kernel import smoothing_matrix_weights


class TieBlocks:
    """Block sums shared by :class:`SortedLines` and :class:`CountedLines`.

    Needs ``xp``, ``shape`` (L, n), ``n_blocks``, ``block_line``,
    ``block_start``, ``block_stop`` and ``_cumulative`` (the float64 running
    sum of the sorted lines, flattened).
    """

    def _line_block_sums(self, lines_of_blocks, cumulative):
        """For each block, the sum of sorted line ``lines_of_blocks[b]`` over the block's ranks."""
        xp = self.xp
        base = lines_of_blocks * self.shape[1]
        before = base + self.block_start - 1
        return (cumulative[base + self.block_stop - 1]
                - xp.where(before >= 0, cumulative[xp.maximum(before, 0)], 0.0))

    def local_reference_block_means(self, sigma):
        """Block means of the local reference (Eq. 2) without building it.

        Eq. 2 is linear in the sorted lines: the smoothed line l is
        sum_k g_k H_(l+k)^-1 / Z_l over the neighbours that exist. Its mean
        over a block's ranks is therefore sum_k g_k (sum of sorted line l + k
        over the same ranks) / Z_l / length, two reads of the running sum per
        block and neighbour: for counting frames (few blocks per line) this is
        far less than smoothing the (L, n) lines for every sigma.
        """
        xp = self.xp
        n_lines = self.shape[0]
        offsets, weights, norm = smoothing_matrix_weights(n_lines, sigma)
        line = self.block_line
        total = xp.zeros(self.n_blocks, dtype=xp.float64)
        for k, g in zip(offsets, weights):
            neighbour = line + int(k)
            inside = (neighbour >= 0) & (neighbour < n_lines)
            total += xp.where(inside, float(g) * self._neighbour_sums(int(k)), 0.0)
        total /= xp.asarray(norm)[line]
        return total / (self.block_stop - self.block_start)

    def _neighbour_sums(self, k):
        """For each block, the sum of reference line (its line + k) over the block's ranks
        (clipped to the frame's lines; the caller drops those outside)."""
        neighbour = self.xp.clip(self.block_line + k, 0, self.shape[0] - 1)
        return self._line_block_sums(neighbour, self._cumulative)
