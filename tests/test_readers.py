"""Readers of TIFF, EER (+ Falcon .gain) and DM4: each reads to the same frames as its MRC twin.

Test files are written by the tests with the libraries a camera pipeline uses
(tifffile for TIFF/BigTIFF, mrcfile for MRC); EER strips and DM4 tag trees are
built byte by byte where no Python writer exists (see tests/formats.py).
"""
import os

import numpy as np
import pytest

from scipion_gain.io import (Dm4Reader, EerGainReader, EerReader, InputError, MrcReader,
                             TiffReader, format_conventions, open_movie, read_gain_reference,
                             read_image)

from formats import (write_dm4, write_eer, write_gain_tiff, write_mrc_stack, write_tiff_movie)
from helpers import SHARED_DATA

CELERITAS = SHARED_DATA / 'de-celeritas'


def frames_of(path, **options):
    with open_movie(path, **options) as reader:
        return np.stack([frame for _, frame in reader.iter_frames()]), reader


def assert_one_line_error(path, match=None, **options):
    with pytest.raises(InputError) as info:
        with open_movie(path, **options) as reader:
            for _ in reader.iter_frames():
                pass
    message = str(info.value)
    assert '\n' not in message and str(path) in message
    if match:
        assert match in message, message
    return message


def counting_movie(rng, shape=(6, 40, 56), dose=1.5, dtype=np.uint8):
    gain = rng.uniform(0.7, 1.3, shape[1:])
    return rng.poisson(dose * gain, shape).astype(dtype)


# --- TIFF -------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype, compression, pages', [
    (np.uint8, 'lzw', True), (np.uint8, 'zlib', False), (np.uint16, 'lzw', False),
    (np.uint16, 'zlib', True), (np.float32, None, True), (np.float32, 'zlib', False)])
def test_tiff_movie_reads_like_its_mrc_twin(tmp_path, dtype, compression, pages):
    rng = np.random.default_rng(1)
    movie = counting_movie(rng, dtype=np.uint16)
    movie = (movie * 37.5 + 0.25).astype(dtype) if dtype == np.float32 else movie.astype(dtype)
    write_tiff_movie(tmp_path / 'm.tif', movie, compression=compression, pages=pages)
    write_mrc_stack(tmp_path / 'm.mrc', movie)
    tiff, reader = frames_of(tmp_path / 'm.tif')
    mrc, _ = frames_of(tmp_path / 'm.mrc')
    assert isinstance(reader, TiffReader)
    assert reader.shape == movie.shape and reader.dtype == np.dtype(dtype)
    assert tiff.dtype == np.float32
    np.testing.assert_array_equal(tiff, mrc)
    np.testing.assert_array_equal(tiff, movie.astype(np.float32))
    assert any('Y flip' in note for note in reader.notes)


def test_tiff_frame_step_and_single_page(tmp_path):
    movie = counting_movie(np.random.default_rng(2))
    write_tiff_movie(tmp_path / 'm.tiff', movie, compression='lzw')
    with open_movie(tmp_path / 'm.tiff') as reader:
        indices = [i for i, _ in reader.iter_frames(step=4)]
        np.testing.assert_array_equal(reader.read_frame(5), movie[5])
    assert indices == [0, 4]
    write_tiff_movie(tmp_path / 'one.tif', movie[:1])
    image, notes = read_image(tmp_path / 'one.tif')
    np.testing.assert_array_equal(image, movie[0])


def test_tiff_bad_files_give_one_line(tmp_path):
    (tmp_path / 'junk.tif').write_bytes(b'this is not a tiff file at all' * 10)
    assert_one_line_error(tmp_path / 'junk.tif', 'not a readable TIFF')
    movie = counting_movie(np.random.default_rng(3))
    write_tiff_movie(tmp_path / 'm.tif', movie, compression='zlib')
    data = (tmp_path / 'm.tif').read_bytes()
    (tmp_path / 'cut.tif').write_bytes(data[:len(data) // 2])
    assert_one_line_error(tmp_path / 'cut.tif')
    import tifffile
    tifffile.imwrite(tmp_path / 'rgb.tif', np.zeros((8, 8, 3), np.uint8), photometric='rgb')
    assert_one_line_error(tmp_path / 'rgb.tif', 'samples per pixel')
    (tmp_path / 'empty.tif').write_bytes(b'')
    assert_one_line_error(tmp_path / 'empty.tif')


# --- EER --------------------------------------------------------------------------------------

@pytest.mark.parametrize('compression', [65000, 65001, 65002])
@pytest.mark.parametrize('strips', [1, 4])
def test_eer_sums_raw_frames_like_its_mrc_twin(tmp_path, compression, strips):
    rng = np.random.default_rng(compression + strips)
    raw = rng.random((20, 48, 64)) < 0.08 * rng.uniform(0.5, 1.5, (48, 64))
    # long empty stretches need chained skip codes
    raw[:, 10:30, :] = False
    write_eer(tmp_path / 'm.eer', raw, compression=compression, rng=rng, strips=strips)
    summed = raw[:18].reshape(3, 6, 48, 64).sum(axis=1).astype(np.uint16)
    write_mrc_stack(tmp_path / 'm.mrc', summed)
    eer, reader = frames_of(tmp_path / 'm.eer', fraction=6)
    mrc, _ = frames_of(tmp_path / 'm.mrc')
    assert isinstance(reader, EerReader)
    assert reader.shape == (3, 48, 64) and reader.raw_frames == 20
    np.testing.assert_array_equal(eer, mrc)
    assert any('last 2 raw frame(s) dropped' in note for note in reader.notes)
    with open_movie(tmp_path / 'm.eer', fraction=6) as again:
        np.testing.assert_array_equal(again.read_raw_frame(7), raw[7])


def test_eer_default_fraction_and_options_ignored_elsewhere(tmp_path):
    from scipion_gain.io import eer
    rng = np.random.default_rng(5)
    raw = rng.random((eer.DEFAULT_FRACTION + 3, 16, 16)) < 0.05
    write_eer(tmp_path / 'm.eer', raw)
    movie, reader = frames_of(tmp_path / 'm.eer')
    assert reader.fraction == eer.DEFAULT_FRACTION and movie.shape == (1, 16, 16)
    np.testing.assert_array_equal(movie[0], raw[:eer.DEFAULT_FRACTION].sum(axis=0))
    write_mrc_stack(tmp_path / 'm.mrc', raw[:2].astype(np.uint8))
    with open_movie(tmp_path / 'm.mrc', fraction=6) as mrc:  # an EER option, ignored by MRC
        assert mrc.n_frames == 2


def test_eer_bad_files_give_one_line(tmp_path):
    rng = np.random.default_rng(6)
    raw = rng.random((4, 16, 16)) < 0.1
    write_eer(tmp_path / 'few.eer', raw)
    assert_one_line_error(tmp_path / 'few.eer', 'fewer than one fraction', fraction=5)
    assert_one_line_error(tmp_path / 'few.eer', 'must be 1 or more', fraction=0)
    write_tiff_movie(tmp_path / 'classic.eer', raw.astype(np.uint8))
    assert_one_line_error(tmp_path / 'classic.eer', 'BigTIFF')
    (tmp_path / 'junk.eer').write_bytes(os.urandom(300))
    assert_one_line_error(tmp_path / 'junk.eer')


def test_falcon_gain_reference(tmp_path):
    rng = np.random.default_rng(7)
    gain = rng.uniform(0.8, 1.25, (32, 48)).astype(np.float32) * 2.0
    gain[3, 4] = 0.0
    gain[5, 6] = np.nan
    write_gain_tiff(tmp_path / 'ref.gain', gain)
    image, notes = read_image(tmp_path / 'ref.gain')
    np.testing.assert_array_equal(image[~np.isnan(gain)], gain[~np.isnan(gain)])
    correction, notes = read_gain_reference(tmp_path / 'ref.gain')
    good = np.isfinite(gain) & (gain > 0)
    assert correction.dtype == np.float32 and np.isfinite(correction).all()
    assert correction[good].mean() == pytest.approx(1, abs=1e-5)
    assert correction[3, 4] == 1 and correction[5, 6] == 1
    np.testing.assert_allclose(correction[good], gain[good] / gain[good].mean(), rtol=1e-5)
    assert any('2 pixel(s) unusable (1 NaN, 1 zero) set to 1' in n for n in notes)
    assert any('Y flip' in n for n in notes)
    assert format_conventions(EerGainReader) == {'relion_xmipp_flip_y': True,
                                                 'gain_convention': 'correction'}


# --- DM4 --------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.float32, np.uint16, np.int32])
def test_dm4_gain_reads_like_its_mrc_twin(tmp_path, dtype):
    rng = np.random.default_rng(8)
    gain = (rng.uniform(0.8, 1.2, (36, 52)) * (1000 if dtype != np.float32 else 1)).astype(dtype)
    write_dm4(tmp_path / 'gain.dm4', gain)
    write_mrc_stack(tmp_path / 'gain.mrc', gain.astype(np.float32))
    dm4, reader = frames_of(tmp_path / 'gain.dm4')
    mrc, _ = frames_of(tmp_path / 'gain.mrc')
    assert isinstance(reader, Dm4Reader) and reader.shape == (1, 36, 52)
    np.testing.assert_array_equal(dm4, mrc)
    correction, notes = read_gain_reference(tmp_path / 'gain.dm4')
    assert correction.mean() == pytest.approx(1, abs=1e-5)
    assert any('reciprocal' in n for n in notes)


def test_dm4_bad_files_give_one_line(tmp_path):
    (tmp_path / 'junk.dm4').write_bytes(b'\x00\x00\x00\x07' + os.urandom(100))
    assert_one_line_error(tmp_path / 'junk.dm4', 'not a DM3/DM4')
    write_dm4(tmp_path / 'ok.dm4', np.ones((8, 8), np.float32))
    data = (tmp_path / 'ok.dm4').read_bytes()
    (tmp_path / 'cut.dm4').write_bytes(data[:len(data) // 3])
    assert_one_line_error(tmp_path / 'cut.dm4')


# --- gain references in general ---------------------------------------------------------------

def test_reciprocal_and_flipped_reference(tmp_path):
    rng = np.random.default_rng(9)
    counts = rng.uniform(50, 150, (20, 30)).astype(np.float32)
    write_mrc_stack(tmp_path / 'counts.mrc', counts)
    correction, notes = read_gain_reference(tmp_path / 'counts.mrc', convention='counts')
    expected = (1 / counts.astype(np.float64))
    np.testing.assert_allclose(correction, expected / expected.mean(), rtol=1e-5)
    assert any('reciprocal' in n for n in notes)
    flipped, notes = read_gain_reference(tmp_path / 'counts.mrc', flip_y=True)
    np.testing.assert_allclose(flipped, (counts / counts.mean())[::-1], rtol=1e-5)
    write_mrc_stack(tmp_path / 'zero.mrc', np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match='no finite positive'):
        read_gain_reference(tmp_path / 'zero.mrc')
    with pytest.raises(ValueError):
        read_gain_reference(tmp_path / 'counts.mrc', convention='inverse')


def test_unknown_and_missing_files(tmp_path):
    (tmp_path / 'movie.xyz').write_bytes(b'1234')
    message = assert_one_line_error(tmp_path / 'movie.xyz', 'unknown movie format')
    for ext in ('.tif', '.eer', '.gain', '.dm4', '.mrc'):
        assert ext in message
    assert_one_line_error(tmp_path / 'absent.tif', 'no such file')


def test_conventions_are_recorded():
    assert format_conventions(TiffReader)['relion_xmipp_flip_y'] is True
    assert format_conventions(MrcReader) == {'relion_xmipp_flip_y': False,
                                             'gain_convention': 'correction'}
    assert format_conventions(Dm4Reader)['relion_xmipp_flip_y'] is True


# --- real detector files ----------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not CELERITAS.is_dir(), reason=f"real detector files not found at {CELERITAS}")


@needs_shared
def test_celeritas_gain_with_lying_header_reads_like_the_fixed_one():
    lying, lying_notes = read_image(CELERITAS / 'celeritas_128x256_gain_deheader.mrc')
    fixed, fixed_notes = read_image(CELERITAS / 'celeritas_128x256_gain.mrc')
    assert lying.shape == fixed.shape and lying.size == 128 * 256
    np.testing.assert_array_equal(lying, fixed)
    assert any('nz=32766' in n for n in lying_notes) and not fixed_notes
    correction, notes = read_gain_reference(CELERITAS / 'celeritas_128x256_gain_deheader.mrc')
    assert correction.mean() == pytest.approx(1, abs=1e-5)
    assert 0.8 < correction.min() and correction.max() < 1.3  # the README's 0.86 .. 1.21
    np.testing.assert_allclose(correction, fixed / fixed.mean(), rtol=1e-5)


@needs_shared
def test_celeritas_gain_through_every_format(tmp_path):
    """The real gain written as TIFF, .gain and DM4 reads back to the same pixels."""
    fixed, _ = read_image(CELERITAS / 'celeritas_128x256_gain.mrc')
    write_tiff_movie(tmp_path / 'g.tif', fixed[None], compression='zlib')
    write_gain_tiff(tmp_path / 'g.gain', fixed)
    write_dm4(tmp_path / 'g.dm4', fixed)
    for name in ('g.tif', 'g.gain', 'g.dm4'):
        image, _ = read_image(tmp_path / name)
        np.testing.assert_array_equal(image, fixed)


@needs_shared
def test_celeritas_dark_and_micrograph_read():
    dark, notes = read_image(CELERITAS / 'celeritas_128x256_dark_deheader.mrc')
    fixed, _ = read_image(CELERITAS / 'celeritas_128x256_dark.mrc')
    np.testing.assert_array_equal(dark, fixed)
    micrograph, _ = read_image(SHARED_DATA / 'micrograph' / 'Ucsf_stack_1142_DW.mrc')
    assert micrograph.shape == (927, 959) and np.isfinite(micrograph).all()
