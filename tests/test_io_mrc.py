"""MRC reading: integer and float stacks, and the real camera-server files in ../shared/data."""
import mrcfile
import numpy as np
import pytest

from scipion_gain.io import InputError, open_movie, read_image, write_mrc

from helpers import SHARED_DATA

CELERITAS = SHARED_DATA / 'de-celeritas'
needs_shared = pytest.mark.skipif(not CELERITAS.exists(), reason='../shared/data is not there')


@pytest.mark.parametrize('dtype', [np.int8, np.int16, np.uint16, np.float32])
def test_stacks_stream_frame_by_frame_as_float32(tmp_path, dtype):
    data = (np.arange(3 * 4 * 5) % 100).reshape(3, 4, 5).astype(dtype)
    path = tmp_path / 'm.mrcs'
    with mrcfile.new(str(path)) as mrc:
        mrc.set_data(data)
    with open_movie(path) as reader:
        assert reader.shape == (3, 4, 5)
        frames = [frame for _, frame in reader.iter_frames()]
    assert all(f.dtype == np.float32 for f in frames)
    np.testing.assert_array_equal(np.stack(frames), data.astype(np.float32))


@needs_shared
def test_camera_server_header_that_lies_about_nz_is_read_from_the_file_size():
    fixed, fixed_notes = read_image(CELERITAS / 'celeritas_128x256_gain.mrc')
    lying, lying_notes = read_image(CELERITAS / 'celeritas_128x256_gain_deheader.mrc')
    assert fixed.shape == (128, 256) and not fixed_notes
    np.testing.assert_array_equal(lying, fixed)
    assert 'nz=32766' in lying_notes[0]
    # the real DE gain: mean 1.00, std 0.046, range 0.86 to 1.21
    assert fixed.mean() == pytest.approx(1.0, abs=0.01)
    assert fixed.std() == pytest.approx(0.046, abs=0.002)


@needs_shared
def test_real_micrograph_reads():
    with open_movie(SHARED_DATA / 'micrograph' / 'Ucsf_stack_1142_DW.mrc') as reader:
        assert reader.shape == (1, 927, 959)
        assert np.isfinite(reader.read_frame(0)).all()


def test_unknown_extension_and_folder_are_refused(tmp_path):
    (tmp_path / 'm.xyz').write_bytes(b'1234')
    with pytest.raises(InputError, match="unknown movie format '.xyz'"):
        open_movie(tmp_path / 'm.xyz')
    with pytest.raises(InputError, match='is a folder'):
        open_movie(tmp_path)


def test_a_stack_is_not_a_gain_reference(tmp_path):
    path = tmp_path / 's.mrc'
    with mrcfile.new(str(path)) as mrc:
        mrc.set_data(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(InputError, match='expected one image, found 2'):
        read_image(path)


def test_write_mrc_is_atomic_and_labelled(tmp_path):
    path = tmp_path / 'out.mrc'
    write_mrc(path, np.ones((4, 6)), label='scipion-gain gain: multiplies raw frames, mean 1')
    with mrcfile.open(str(path)) as mrc:
        assert mrc.data.dtype == np.float32 and mrc.data.shape == (4, 6)
        assert mrc.header.label[1].startswith(b'scipion-gain gain')
    assert [p.name for p in tmp_path.iterdir()] == ['out.mrc']


@pytest.mark.parametrize('shape', [(300, 1000), (7, 8195), (512, 4096)])
def test_write_mrc_header_statistics_are_mrcfiles_own(tmp_path, shape):
    # write_mrc takes the header's min, max, mean and rms a block at a time (no frame-sized
    # temporary): the float32 values must be those mrcfile computes itself, bit for bit
    rng = np.random.default_rng(5)
    image = rng.normal(1.0, 0.05, shape).astype(np.float32)
    image[rng.random(shape) < 0.01] = 0.0
    image[0, 0] = 7.5
    write_mrc(tmp_path / 'ours.mrc', image)
    with mrcfile.new(str(tmp_path / 'theirs.mrc')) as mrc:
        mrc.set_data(image)
    with mrcfile.open(str(tmp_path / 'ours.mrc')) as ours, \
            mrcfile.open(str(tmp_path / 'theirs.mrc')) as theirs:
        for field in ('dmin', 'dmax', 'dmean', 'rms'):
            assert ours.header[field].tobytes() == theirs.header[field].tobytes(), field
        np.testing.assert_array_equal(ours.data, image)
