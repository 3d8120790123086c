"""Readers name a truncated file, refuse it in strict mode, use its complete frames in lenient
mode; gain references have one policy for unusable pixels; memory is flat in frames."""
import json
import subprocess
import sys
import textwrap

import mrcfile
import numpy as np
import pytest

from scipion_gain.io import (InputError, TruncatedInput, open_movie, read_gain_reference,
                             reading)

from formats import write_eer, write_mrc_stack, write_tiff_movie
from helpers import SHARED_DATA


def counting(n=10, shape=(64, 80), seed=1, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return rng.poisson(1.5, (n,) + shape).astype(dtype)


def cut(path, keep):
    """Keep the first ``keep`` bytes (an int) or that fraction of the file (a float)."""
    data = path.read_bytes()
    size = keep if isinstance(keep, int) else int(len(data) * keep)
    cut_path = path.with_name('cut_' + path.name)
    cut_path.write_bytes(data[:size])
    return cut_path


def frames(path, **options):
    with open_movie(path, **options) as reader:
        return np.stack([f for _, f in reader.iter_frames()]), reader


# --- MRC ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('where', ['inside a frame', 'at a frame boundary'])
def test_truncated_mrc_is_named_refused_strict_and_read_lenient(tmp_path, where):
    movie = counting(10).astype(np.float32)
    write_mrc_stack(tmp_path / 'm.mrcs', movie)
    frame_bytes = movie[0].nbytes
    keep = 1024 + 4 * frame_bytes + (frame_bytes // 2 if where == 'inside a frame' else 0)
    path = cut(tmp_path / 'm.mrcs', keep)
    with pytest.raises(TruncatedInput) as info:
        open_movie(path)
    assert str(info.value) == f"{path}: truncated: 4 of 10 frames complete"
    assert (info.value.complete, info.value.claimed) == (4, 10)
    data, reader = frames(path, strict=False)
    np.testing.assert_array_equal(data, movie[:4])
    assert reader.truncation == {'complete': 4, 'claimed': 10, 'unit': 'frames',
                                 'used': 'complete frames (lenient)'}
    assert reader.notes[0] == ("truncated: 4 of 10 frames complete; lenient: using the "
                               "4 frame(s) that are complete")
    assert not any('camera-server' in note for note in reader.notes)
    with reading(strict=False):  # the mode for callers that open movies deeper down
        assert frames(path)[0].shape == (4, 64, 80)
    with pytest.raises(TruncatedInput):
        open_movie(path)  # back to strict after the block


def test_header_only_and_zero_frame_mrc(tmp_path):
    write_mrc_stack(tmp_path / 'm.mrc', counting(10).astype(np.float32))
    header_only = cut(tmp_path / 'm.mrc', 1024)
    with pytest.raises(InputError, match=r'no complete 80 x 64 image \(truncated: 0 of 10 frames'):
        open_movie(header_only, strict=False)
    with mrcfile.new(str(tmp_path / 'zero.mrc')) as mrc:
        mrc.set_data(np.zeros((1, 4, 4), np.float32))
        mrc.header.nz = 0
    with pytest.raises(InputError, match='holds no frames'):
        open_movie(tmp_path / 'zero.mrc')


def test_camera_server_header_is_not_called_truncated(tmp_path):
    """nz=32766 over a file of whole images is the DE server's header, not a cut file."""
    image = np.random.default_rng(2).uniform(0.9, 1.1, (16, 24)).astype(np.float32)
    write_mrc_stack(tmp_path / 'g.mrc', image)
    with open(tmp_path / 'g.mrc', 'r+b') as handle:
        handle.seek(8)
        handle.write(np.int32(32766).tobytes())
    data, reader = frames(tmp_path / 'g.mrc')
    np.testing.assert_array_equal(data[0], image)
    assert reader.truncation is None and 'camera-server header' in reader.notes[0]
    cut_image = cut(tmp_path / 'g.mrc', 1024 + image.nbytes - 8)  # not whole: refused
    with pytest.raises(InputError, match='no complete 24 x 16 image'):
        open_movie(cut_image)


def test_frames_of_mrc_are_fresh_copies_and_readers_close(tmp_path):
    movie = counting(3).astype('>i2')  # a big-endian integer file
    with mrcfile.new(str(tmp_path / 'be.mrc')) as mrc:
        mrc.set_data(movie)
    with open_movie(tmp_path / 'be.mrc') as reader:
        first = reader.read_frame(0)
        first[:] = -1
        np.testing.assert_array_equal(reader.read_frame(0), movie[0])
        with pytest.raises(IndexError):
            reader.read_frame(3)
    assert first.dtype == np.float32


# --- TIFF and EER ------------------------------------------------------------------------------

def test_truncated_lzw_tiff_of_the_issue(tmp_path):
    """10 frames written with tifffile's shape metadata, cut to 4 decodable: was read as 1 frame."""
    movie = counting(10, (256, 256))
    write_tiff_movie(tmp_path / 'm.tif', movie, compression='lzw', pages=False)
    path = cut(tmp_path / 'm.tif', 0.42)
    with pytest.raises(TruncatedInput, match=r'truncated: 4 of 10 frames complete$'):
        open_movie(path)
    data, reader = frames(path, strict=False)
    np.testing.assert_array_equal(data, movie[:4])
    assert reader.truncation['claimed'] == 10 and 'lenient' in reader.notes[0]


def test_truncated_tiff_without_metadata_says_more_were_announced(tmp_path):
    movie = counting(10, (128, 128))
    write_tiff_movie(tmp_path / 'm.tif', movie, compression='zlib', pages=True)
    path = cut(tmp_path / 'm.tif', 0.55)
    with pytest.raises(TruncatedInput) as info:
        open_movie(path)
    complete = info.value.complete
    assert 1 <= complete < 10 and info.value.claimed is None
    assert str(info.value).endswith(f"truncated: {complete} of more than {complete} frames complete")
    data, _ = frames(path, strict=False)
    np.testing.assert_array_equal(data, movie[:complete])


def test_complete_tiff_and_eer_are_not_truncated(tmp_path):
    write_tiff_movie(tmp_path / 'm.tif', counting(5), compression='lzw', pages=False)
    write_eer(tmp_path / 'm.eer', np.random.default_rng(3).random((12, 16, 16)) < 0.1)
    for path, options in ((tmp_path / 'm.tif', {}), (tmp_path / 'm.eer', {'fraction': 4})):
        with open_movie(path, **options) as reader:
            assert reader.truncation is None


def test_truncated_eer_counts_raw_frames(tmp_path):
    raw = np.random.default_rng(4).random((40, 32, 32)) < 0.05
    write_eer(tmp_path / 'm.eer', raw)
    path = cut(tmp_path / 'm.eer', 0.5)
    with pytest.raises(TruncatedInput) as info:
        open_movie(path, fraction=8)
    complete = info.value.complete
    assert 8 <= complete < 40 and info.value.claimed == 40  # numberOfFrames in the metadata
    assert f"truncated: {complete} of 40 raw EER frames complete" in str(info.value)
    data, reader = frames(path, fraction=8, strict=False)
    assert data.shape == (complete // 8, 32, 32)
    np.testing.assert_array_equal(data, raw[:complete // 8 * 8].reshape(-1, 8, 32, 32).sum(axis=1))


# --- gain references: one door, one policy -----------------------------------------------------

def test_gain_reference_masks_and_reports_unusable_pixels(tmp_path):
    gain = np.random.default_rng(5).uniform(0.8, 1.2, (20, 30)).astype(np.float32)
    gain[0, 0], gain[1, 1], gain[2, 2], gain[3, 3] = 0, -1, np.nan, np.inf
    write_mrc_stack(tmp_path / 'ref.mrc', gain)
    reference = read_gain_reference(tmp_path / 'ref.mrc')
    correction, notes = reference  # unpacks as before
    expected = np.zeros(gain.shape, bool)
    expected[[0, 1, 2, 3], [0, 1, 2, 3]] = True
    np.testing.assert_array_equal(reference.unusable, expected)
    assert np.all(correction[expected] == 1) and np.isfinite(correction).all()
    assert correction[~expected].mean() == pytest.approx(1, abs=1e-6)
    assert reference.counts == {'NaN': 1, 'inf': 1, 'zero': 1, 'negative': 1}
    assert any(n.startswith('4 pixel(s) unusable (1 NaN, 1 inf, 1 zero, 1 negative) set to 1, '
                            "so that the movies' own defect test judges them") for n in notes)
    info = json.loads(json.dumps(reference.to_json()))
    assert info['unusable_pixels'] == 4 and info['unusable'] == reference.counts
    flipped = read_gain_reference(tmp_path / 'ref.mrc', flip_y=True)
    np.testing.assert_array_equal(flipped.unusable, expected[::-1])


# --- memory flat in frames ---------------------------------------------------------------------

# VmHWM of /proc/self/status: the peak of this process image (ru_maxrss would also count
# the pytest process it was forked from, before the exec)
PEAK_RSS = textwrap.dedent('''
    import sys
    import numpy as np
    from scipion_gain.io import open_movie
    total = None
    with open_movie(sys.argv[1], fraction=1) as reader:  # EER: one raw frame a frame
        for _, frame in reader.iter_frames():
            total = frame.astype(np.float64) if total is None else total + frame
    with open('/proc/self/status') as status:
        print([line.split()[1] for line in status if line.startswith('VmHWM:')][0])  # kB
''')


def _peak_rss_mb(path):
    out = subprocess.run([sys.executable, '-c', PEAK_RSS, str(path)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def _write_frames(path, fmt, n):
    """``n`` frames of 512 x 512 (1 MB each as float32) in format ``fmt``, frame by frame."""
    rng = np.random.default_rng(6)
    if fmt == 'mrc':
        frame = rng.random((512, 512), dtype=np.float32)
        with mrcfile.new_mmap(str(path), shape=(n, 512, 512), mrc_mode=2) as mrc:
            for index in range(n):
                mrc.data[index] = frame
    elif fmt in ('tif', 'tif-lzw'):
        import tifffile
        frame = (rng.random((512, 512), dtype=np.float32) if fmt == 'tif'
                 else rng.poisson(1.5, (512, 512)).astype(np.uint8))
        with tifffile.TiffWriter(str(path)) as tif:
            for _ in range(n):
                tif.write(frame, photometric='minisblack', metadata=None,
                          compression='lzw' if fmt == 'tif-lzw' else None)
    else:
        write_eer(path, rng.random((n, 512, 512)) < 0.02)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/status')
@pytest.mark.parametrize('fmt', ['mrc', 'tif', 'tif-lzw', 'eer'])
def test_peak_memory_does_not_grow_with_frames(tmp_path, fmt):
    """512 x 512 frames: reading 80 costs what reading 10 does, in every format. MRC through
    a memory map kept the mapped pages resident: 78 -> 138 MB float32."""
    peaks = {}
    for n in (10, 80):
        path = tmp_path / f"m{n}.{ {'mrc': 'mrcs', 'eer': 'eer'}.get(fmt, 'tif')}"
        _write_frames(path, fmt, n)
        peaks[n] = _peak_rss_mb(path)
    assert peaks[80] - peaks[10] < 12, peaks  # a few frames' worth at most, not 70 MB


needs_shared = pytest.mark.skipif(not (SHARED_DATA / 'de-celeritas').is_dir(),
                                  reason='../shared/data is not there')


@needs_shared
def test_real_movie_reads_the_same_as_through_mrcfile():
    path = SHARED_DATA / 'de-celeritas' / 'celeritas_64x64_nobeam_movie.mrcs'
    with mrcfile.mmap(str(path), permissive=True) as mrc:
        expected = np.asarray(mrc.data[[0, 1, 511]], dtype=np.float32)
    with open_movie(path) as reader:
        assert reader.shape == (512, 64, 64) and reader.truncation is None
        got = np.stack([reader.read_frame(i) for i in (0, 1, 511)])
    np.testing.assert_array_equal(got, expected)
