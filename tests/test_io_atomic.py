"""Writers replace a file whole or not at all; a transaction lands a set of files together."""
import mrcfile
import numpy as np
import pytest

from scipion_gain.io import write_mrc
from scipion_gain.io.atomic import atomic_path, transaction, write_bytes


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / 'out.mrc'
    path.write_bytes(b'old')
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, 'wb') as handle:
                handle.write(b'half')
            raise RuntimeError('disk full')
    assert path.read_bytes() == b'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.mrc']


def test_transaction_lands_all_files_at_the_end_or_none(tmp_path):
    gain, stats = tmp_path / 'g.mrc', tmp_path / 's.json'
    gain.write_bytes(b'old map')
    stats.write_bytes(b'old json')
    with pytest.raises(KeyboardInterrupt):
        with transaction():
            write_mrc(gain, np.ones((4, 4)))
            assert gain.read_bytes() == b'old map'  # deferred until the block ends
            raise KeyboardInterrupt
    assert gain.read_bytes() == b'old map' and stats.read_bytes() == b'old json'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['g.mrc', 's.json']
    with transaction():
        write_mrc(gain, np.full((4, 4), 2.0))
        write_bytes(stats, b'{}')
        write_bytes(stats, b'{"last": 1}')  # written twice: the last version lands
    with mrcfile.open(str(gain)) as mrc:
        assert float(mrc.data.mean()) == 2.0
    assert stats.read_bytes() == b'{"last": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['g.mrc', 's.json']
