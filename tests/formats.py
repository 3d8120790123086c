"""Writers of test files in the camera formats, with the libraries a camera pipeline uses.

TIFF and BigTIFF: tifffile. MRC: mrcfile. Two formats have no Python writer,
so the bytes are built here from the published layouts and the files are
then read back by the maintained readers (imagecodecs, ncempy):

* EER: imagecodecs 2026.1.14 has ``eer_decode`` but its ``eer_encode`` raises
  NotImplementedError, and tifffile cannot compress with schemes 65000-65002.
  ``eer_bitstream`` builds the bitstream (LSB-first codes of ``skip`` bits,
  an event followed by ``horz + vert`` sub-pixel bits; a skip of all ones
  advances without an event), tifffile writes a BigTIFF whose strips are
  those bytes (pre-encoded strips, written with a placeholder compression),
  and tifffile's ``TiffTag.overwrite`` then sets the Compression tag to the
  EER scheme, with the AcquisitionMetadata tag 65001 that marks an EER file.
* DM4: ``write_dm4`` writes the tag tree Gatan's DM4 uses (big-endian
  structure, little-endian data): a thumbnail and one image, as ncempy expects.
"""
import struct

import mrcfile
import numpy as np
import tifffile

EER_SCHEME_BITS = {65000: (8, 2, 2), 65001: (7, 2, 2), 65002: (7, 2, 2)}


def write_mrc_stack(path, frames):
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(frames))


def write_tiff_movie(path, frames, compression=None, pages=True):
    """A multi-page TIFF movie, one page per frame (or one shaped write)."""
    frames = np.asarray(frames)
    if pages:
        with tifffile.TiffWriter(str(path)) as tif:
            for frame in frames:
                tif.write(frame, compression=compression, photometric='minisblack', metadata=None)
    else:
        tifffile.imwrite(str(path), frames, compression=compression, photometric='minisblack')


def eer_bitstream(events, skip_bits=7, horz_bits=2, vert_bits=2, rng=None):
    """EER bytes for a bool frame ``events`` (at most one event per pixel).

    Sub-pixel bits are random when ``rng`` is given (a reader at the physical
    pixel size must ignore them), else zero.
    """
    skip_max = (1 << skip_bits) - 1
    sub_bits = horz_bits + vert_bits
    value, nbits = 0, 0

    def put(code, width):
        nonlocal value, nbits
        value |= int(code) << nbits
        nbits += width

    position = 0
    for pixel in np.flatnonzero(np.asarray(events).ravel()).tolist():
        skip = pixel - position
        while skip >= skip_max:
            put(skip_max, skip_bits)
            skip -= skip_max
        put(skip, skip_bits)
        put(0 if rng is None else rng.integers(0, 1 << sub_bits), sub_bits)
        position = pixel + 1
    remaining = events.size - position  # skip to the end: the decoder stops there
    while remaining >= skip_max:
        put(skip_max, skip_bits)
        remaining -= skip_max
    put(remaining, skip_bits)
    nbits += skip_bits + sub_bits  # the decoder looks at most one code ahead
    nbytes = (nbits + 7) // 8
    nbytes += nbytes % 2  # whole 16-bit words
    return value.to_bytes(nbytes, 'little')


def write_eer(path, raw_frames, compression=65001, rng=None, strips=1):
    """An EER BigTIFF of bool ``raw_frames``, one page per raw frame."""
    skip, horz, vert = EER_SCHEME_BITS[compression]
    raw_frames = np.asarray(raw_frames, dtype=bool)
    _, rows, cols = raw_frames.shape
    per_strip = -(-rows // strips)
    meta = (b'<?xml version="1.0"?><metadata><item name="numberOfFrames">%d</item>'
            b'<item name="sensorImageWidth">%d</item><item name="sensorImageHeight">%d</item>'
            b'</metadata>' % (len(raw_frames), cols, rows))
    extratags = [(65001, 7, len(meta), meta, True)]
    if compression == 65002:
        extratags += [(65007, 3, 1, skip, True), (65008, 3, 1, horz, True), (65009, 3, 1, vert, True)]
    with tifffile.TiffWriter(str(path), bigtiff=True) as tif:
        for frame in raw_frames:
            chunks = [eer_bitstream(frame[top:top + per_strip], skip, horz, vert, rng)
                      for top in range(0, rows, per_strip)]
            tif.write(iter(chunks), shape=(rows, cols), dtype=np.uint8, compression='zlib',
                      rowsperstrip=per_strip, photometric='minisblack', metadata=None,
                      extratags=extratags)
    with tifffile.TiffFile(str(path), mode='r+b') as tif:
        for page in tif.pages:
            page.tags['Compression'].overwrite(compression)


def write_gain_tiff(path, image):
    """A Falcon-style ``.gain`` reference: one float32 TIFF image."""
    tifffile.imwrite(str(path), np.asarray(image, dtype=np.float32), photometric='minisblack')


# --- DM4 --------------------------------------------------------------------------------------

_DM_TYPES = {np.dtype(np.float32): (6, 2), np.dtype(np.uint16): (4, 10), np.dtype(np.int16): (2, 1),
             np.dtype(np.uint8): (8, 6), np.dtype(np.int32): (3, 7), np.dtype(np.uint32): (5, 11)}
_TAG_GROUP, _TAG_DATA = 20, 21


def _dm_value(encoded_type, value):
    """Data tag body: %%%%, info (big-endian u8), value (little-endian)."""
    fmt = {2: '<h', 3: '<i', 4: '<H', 5: '<I', 6: '<f', 7: '<d'}[encoded_type]
    return b'%%%%' + struct.pack('>QQ', 1, encoded_type) + struct.pack(fmt, value)


def _dm_array(element_type, payload, count):
    return b'%%%%' + struct.pack('>QQQQ', 3, 20, element_type, count) + payload


def _dm_units(text):
    return _dm_array(4, text.encode('utf-16-le'), len(text))


def _dm_tag(label, body, is_group):
    label = label.encode('latin-1')
    head = struct.pack('>BH', _TAG_GROUP if is_group else _TAG_DATA, len(label)) + label
    return head + struct.pack('>Q', len(body)) + body


def _dm_group(entries):
    """A tag group: entries are (label, body, is_group)."""
    return struct.pack('>BBQ', 0, 0, len(entries)) + b''.join(_dm_tag(*e) for e in entries)


def _dm_image(data, data_type, element_type):
    rows, cols = data.shape
    dims = _dm_group([('', _dm_value(5, cols), False), ('', _dm_value(5, rows), False)])
    calib_dim = _dm_group([
        ('', _dm_group([('Origin', _dm_value(6, 0.0), False), ('Scale', _dm_value(6, 1.0), False),
                        ('Units', _dm_units('nm'), False)]), True)
        for _ in range(2)])
    calibrations = _dm_group([('Dimension', calib_dim, True)])
    image_data = _dm_group([
        ('Calibrations', calibrations, True),
        ('Data', _dm_array(element_type, np.ascontiguousarray(data).astype(data.dtype.newbyteorder('<')).tobytes(),
                           data.size), False),
        ('DataType', _dm_value(5, data_type), False),
        ('Dimensions', dims, True),
        ('PixelDepth', _dm_value(5, data.dtype.itemsize), False),
    ])
    return _dm_group([('ImageData', image_data, True), ('Name', _dm_units('gain'), False)])


def write_dm4(path, image):
    """A DM4 file holding a small RGB thumbnail and ``image`` (2-D)."""
    image = np.asarray(image)
    element_type, data_type = _DM_TYPES[image.dtype]
    thumb = np.zeros((4, 4), dtype=np.uint32)
    thumb_group = _dm_group([
        ('ImageData', _dm_group([
            ('Calibrations', _dm_group([('Dimension', _dm_group([
                ('', _dm_group([('Origin', _dm_value(6, 0.0), False), ('Scale', _dm_value(6, 1.0), False),
                                ('Units', _dm_units(''), False)]), True) for _ in range(2)]), True)]), True),
            ('Data', _dm_array(5, thumb.astype('<u4').tobytes(), thumb.size), False),
            ('DataType', _dm_value(5, 23), False),
            ('Dimensions', _dm_group([('', _dm_value(5, 4), False), ('', _dm_value(5, 4), False)]), True),
            ('PixelDepth', _dm_value(5, 4), False),
        ]), True)])
    image_list = _dm_group([('', thumb_group, True), ('', _dm_image(image, data_type, element_type), True)])
    root = _dm_group([('ImageList', image_list, True)])
    body = struct.pack('>I', 1) + root + b'\0' * 8
    header = struct.pack('>IQ', 4, len(body) + 12 - 4)
    with open(str(path), 'wb') as handle:
        handle.write(header + body)
