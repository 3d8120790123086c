"""Frame streaming and the spreading of movies over devices, checked on the CPU.

The GPU ring of pinned buffers is exercised against a small stand-in for CuPy
whose host-to-device copies are *lazy*: a copy reads the pinned buffer only
when its stream is synchronised or waited on, as a real asynchronous copy may.
If the uploader refilled a pinned buffer before its copy had run, or handed
out a frame before its copy was waited on, the frames would come out wrong.
"""
import sys
import threading
import types

import numpy as np
import pytest

from scipion_gain.estimator.arrays import Device
from scipion_gain.estimator.transfer import (FrameUploader, device_labels, map_over_devices,
                                             read_ahead, split_over_devices)


def test_cpu_upload_is_a_float32_pass_through():
    frames = [np.full((3, 4), i, dtype=np.float32) for i in range(3)] + [np.ones((3, 4), np.uint8)]
    out = list(FrameUploader('cpu').upload(iter(frames)))
    assert out[0] is frames[0]                      # no copy of a float32 frame
    assert out[3].dtype == np.float32 and out[3].sum() == 12


def test_cpu_upload_reads_one_frame_ahead_in_a_thread_and_hands_on_its_errors():
    readers, held = [], []

    def frames():
        for i in range(4):
            readers.append(threading.current_thread().name)
            yield np.full((2, 2), i, np.uint16)
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for frame in FrameUploader('cpu').upload(frames()):
            held.append(len(readers) - len(got))    # frames read, less those handed on
            got.append(int(frame[0, 0]))
    assert got == [0, 1, 2, 3]
    assert set(readers) == {'frame-reader'}
    assert max(held) <= 3                          # one in the queue, one in the reader's hand
    unthreaded = list(FrameUploader('cpu', read_ahead_frames=0).upload(
        iter([np.ones((2, 2), np.uint8)])))
    assert unthreaded[0].dtype == np.float32


def test_read_ahead_keeps_order_and_raises_the_readers_error():
    assert list(read_ahead(iter(range(10)), depth=3)) == list(range(10))

    def broken():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in read_ahead(broken()):
            got.append(item)
    assert got == [1]


def test_read_ahead_stops_its_reader_when_the_loop_ends_early():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    for item in read_ahead(endless(), depth=2):
        if item == 3:
            break
    assert threading.active_count() == before
    assert len(produced) <= 3 + 1 + 3  # never more than depth (+ one in hand) ahead


class _Stream:
    def __init__(self, non_blocking=False):
        self.ops = []
        self.done = 0

    def run_until(self, mark):
        while self.done < mark:
            self.ops[self.done]()
            self.done += 1

    def synchronize(self):
        self.run_until(len(self.ops))

    def wait_event(self, event):
        event.synchronize()


class _Event:
    def __init__(self, disable_timing=False):
        self.stream, self.mark = None, 0

    def record(self, stream=None):
        self.stream, self.mark = stream, (len(stream.ops) if stream is not None else 0)

    def synchronize(self):
        if self.stream is not None:
            self.stream.run_until(self.mark)


class _DeviceArray(np.ndarray):
    def set(self, host, stream=None):
        stream.ops.append(lambda: np.copyto(self, host))  # reads the pinned buffer later


@pytest.fixture
def fake_cupy(monkeypatch):
    compute = _Stream()
    cuda = types.SimpleNamespace(Stream=_Stream, Event=_Event, get_current_stream=lambda: compute)
    cupy = types.SimpleNamespace(cuda=cuda, float32=np.float32,
                                 empty=lambda shape, dtype: np.empty(shape, dtype).view(_DeviceArray))
    cupyx = types.SimpleNamespace(empty_pinned=lambda shape, dtype: np.empty(shape, dtype))
    monkeypatch.setitem(sys.modules, 'cupyx', cupyx)
    return Device(cupy, 'gpu:0')


@pytest.mark.parametrize('buffers, read_ahead_frames', [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_gpu_ring_hands_out_every_frame_intact(fake_cupy, buffers, read_ahead_frames):
    frames = [np.full((4, 5), i, dtype=np.uint16) for i in range(7)]
    uploader = FrameUploader(fake_cupy, buffers=buffers, read_ahead_frames=read_ahead_frames)
    seen = []
    for frame in uploader.upload(iter(frames)):
        assert frame.dtype == np.float32
        seen.append(np.array(frame))  # copy: the buffer is reused for a later frame
    assert [int(f[0, 0]) for f in seen] == list(range(7))
    assert all(np.all(f == f[0, 0]) for f in seen)
    assert len(uploader._slots) == min(buffers, 7)
    assert uploader.uploaded_bytes == 7 * frames[0].nbytes


def test_gpu_ring_copes_with_a_change_of_frame_type(fake_cupy):
    frames = [np.full((2, 2), 1, np.uint8), np.full((2, 2), 2.5, np.float32),
              np.full((2, 2), 3, np.uint8)]
    out = [np.array(f) for f in FrameUploader(fake_cupy, read_ahead_frames=0).upload(frames)]
    assert [float(f[0, 0]) for f in out] == [1.0, 2.5, 3.0]


def test_device_labels_and_round_robin_split():
    assert device_labels('0 1') == ['gpu:0', 'gpu:1']
    assert device_labels('2,3') == ['gpu:2', 'gpu:3']
    assert device_labels([1]) == ['gpu:1']
    assert device_labels('') == ['cpu']
    plan = split_over_devices(['a', 'b', 'c', 'd', 'e'], ['gpu:0', 'gpu:1'])
    assert plan == {'gpu:0': ['a', 'c', 'e'], 'gpu:1': ['b', 'd']}


def test_map_over_devices_runs_everything_once_and_keeps_errors_per_item():
    calls = []
    lock = threading.Lock()

    def work(item, device):
        with lock:
            calls.append((item, device))
        if item == 3:
            raise ValueError("bad movie")
        return item * 10

    results = map_over_devices(work, range(6), ['gpu:0', 'gpu:1'])
    assert sorted(item for item, _ in calls) == list(range(6))
    assert {device for _, device in calls} <= {'gpu:0', 'gpu:1'}
    assert [r for r, _ in results] == [0, 10, 20, None, 40, 50]
    assert isinstance(results[3][1], ValueError)
    assert all(e is None for i, (_, e) in enumerate(results) if i != 3)


def test_a_gpu_index_beyond_the_visible_devices_is_a_clear_device_error(monkeypatch):
    from scipion_gain.estimator import arrays
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        Device=lambda index: types.SimpleNamespace(use=lambda: None)))
    monkeypatch.setattr(arrays, '_cupy_or_reason', lambda: (fake, None))
    assert arrays.resolve_device('gpu:0').label == 'gpu:0'
    with pytest.raises(arrays.DeviceError, match="GPU 3 requested but only 1"):
        arrays.resolve_device('gpu:3')
