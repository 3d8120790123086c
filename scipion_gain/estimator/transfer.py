"""Frames to the device, and movies over several devices.

:class:`FrameUploader` hands the estimator one frame at a time on its device.
On the CPU it is a pass-through. On a GPU (CuPy) it keeps a small ring of
pinned (page-locked) host buffers and device buffers, and copies frame i + 1
on its own CUDA stream while the estimator works on frame i; a reader thread
reads frame i + 2 from disk meanwhile. Only ``buffers`` frames are ever on the
device, whatever the length of the movie.

:func:`map_over_devices` spreads movies over a list of devices (the
protocol's ``gpuList``): one worker thread per device, each running the
estimator with ``device='gpu:N'``.
"""
import queue
import threading
from collections import deque

import numpy as np

from .arrays import resolve_device

_END = object()


#: frames read ahead on the host (the CPU device), in a reader thread
HOST_READ_AHEAD = 1


def read_ahead(frames, depth=2):
    """Iterate ``frames`` with a reader thread ``depth`` frames ahead.

    The reading (disk, decoding) then overlaps the consumer's work; errors in
    the reader are raised in the consumer, and leaving the loop early stops
    the reader.
    """
    depth = max(1, int(depth))
    slots = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def reader():
        try:
            for frame in frames:
                while not stop.is_set():
                    try:
                        slots.put((frame, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((_END, None))
        except BaseException as exc:  # handed over to the consumer
            slots.put((_END, exc))

    thread = threading.Thread(target=reader, name='frame-reader', daemon=True)
    thread.start()
    try:
        while True:
            frame, error = slots.get()
            if frame is _END:
                if error is not None:
                    raise error
                return
            yield frame
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)


class FrameUploader:
    """Frames (2-D host arrays) onto ``device`` as float32, one at a time.

    ``upload(frames)`` is a generator. On the CPU it yields each frame as a
    float32 NumPy array (no copy when it already is one), read HOST_READ_AHEAD frame
    ahead in a thread. On a GPU a frame
    yielded is valid until the next one is asked for (its device buffer is
    then reused): use it, do not keep it.

    GPU pipeline, per frame i, with ``buffers`` slots (default 2):
    the host frame is copied into the slot's pinned buffer (after the slot's
    previous upload has finished), the copy stream waits until the compute
    stream has finished with the slot's device buffer, then copies
    asynchronously and records ``ready``; the compute stream waits on
    ``ready`` before the frame is yielded. Integer frames travel as they are
    (2 or 1 bytes a pixel instead of 4) and are converted on the device.
    """

    def __init__(self, device='cpu', buffers=2, read_ahead_frames=2):
        self.device = resolve_device(device)
        self.buffers = max(1, int(buffers))
        self.read_ahead_frames = int(read_ahead_frames)
        self.uploaded_bytes = 0   # what crossed the bus, for the benchmark
        self._slots = []

    def upload(self, frames):
        if not self.device.is_gpu:
            # on the host too the reading (disk, float32 conversion, the stages) overlaps the
            # consumer's work; one frame ahead: at most two frames more held than without
            if self.read_ahead_frames > 0:
                frames = read_ahead(frames, min(self.read_ahead_frames, HOST_READ_AHEAD))
            for frame in frames:
                yield np.asarray(frame, dtype=np.float32)
            return
        if self.read_ahead_frames > 0:
            frames = read_ahead(frames, self.read_ahead_frames)
        yield from self._upload_gpu(frames)

    # -- GPU -------------------------------------------------------------
    def _slot(self, index, frame):
        """The slot ``index`` fit to hold ``frame`` (re-allocated if shape or type changed)."""
        cupy = self.device.xp
        import cupyx
        while len(self._slots) <= index:
            self._slots.append(None)
        slot = self._slots[index]
        if slot is None or slot['host'].shape != frame.shape or slot['host'].dtype != frame.dtype:
            if slot is not None:
                slot['ready'].synchronize()
                slot['consumed'].synchronize()
            slot = {'host': cupyx.empty_pinned(frame.shape, dtype=frame.dtype),
                    'device': cupy.empty(frame.shape, dtype=frame.dtype),
                    'ready': cupy.cuda.Event(disable_timing=True),
                    'consumed': cupy.cuda.Event(disable_timing=True)}
            slot['ready'].record()      # both "done" from the start
            slot['consumed'].record()
            self._slots[index] = slot
        return slot

    def _send(self, index, frame, stream):
        frame = np.asarray(frame)
        if frame.dtype.kind not in 'uif' or frame.dtype.itemsize > 4:
            frame = frame.astype(np.float32)
        slot = self._slot(index, frame)
        slot['ready'].synchronize()           # the pinned buffer's last copy is done
        np.copyto(slot['host'], frame)
        stream.wait_event(slot['consumed'])   # the estimator is done with the device buffer
        slot['device'].set(slot['host'], stream=stream)
        slot['ready'].record(stream)
        self.uploaded_bytes += frame.nbytes
        return slot

    def _upload_gpu(self, frames):
        cupy = self.device.xp
        copy_stream = cupy.cuda.Stream(non_blocking=True)
        compute = cupy.cuda.get_current_stream()
        frames = iter(frames)
        pending = deque()
        next_slot = 0
        for frame in frames:  # fill the ring
            pending.append(self._send(next_slot, frame, copy_stream))
            next_slot = (next_slot + 1) % self.buffers
            if len(pending) == self.buffers:
                break
        try:
            while pending:
                slot = pending.popleft()
                compute.wait_event(slot['ready'])
                data = slot['device']
                yield data if data.dtype == np.float32 else data.astype(cupy.float32)
                slot['consumed'].record(compute)
                frame = next(frames, _END)
                if frame is not _END:
                    pending.append(self._send(next_slot, frame, copy_stream))
                    next_slot = (next_slot + 1) % self.buffers
        finally:  # no copy may still read a pinned buffer when it is freed
            copy_stream.synchronize()


def device_labels(gpu_list):
    """'gpu:N' labels from a Scipion ``gpuList`` ('0 1', '0,1', [0, 1]); ['cpu'] if empty."""
    if isinstance(gpu_list, str):
        gpu_list = gpu_list.replace(',', ' ').split()
    labels = [f'gpu:{int(g)}' for g in (gpu_list or [])]
    return labels or ['cpu']


def split_over_devices(items, devices):
    """Round-robin assignment: {device: [items...]} keeping each device's items in order."""
    devices = list(devices) or ['cpu']
    plan = {device: [] for device in devices}
    for index, item in enumerate(items):
        plan[devices[index % len(devices)]].append(item)
    return plan


def map_over_devices(function, items, devices):
    """Run ``function(item, device)`` for every item, one worker thread per device.

    Each device takes the next item when it is free (a slow movie does not
    hold back the others). Returns a list, in the order of ``items``, of
    ``(result, error)`` pairs: one failing item does not stop the others.
    ``function`` is typically ``lambda movie, device: estimate_gain([movie],
    settings, device=device)``.
    """
    items = list(items)
    devices = list(devices) or ['cpu']
    results = [None] * len(items)
    todo = queue.Queue()
    for index in range(len(items)):
        todo.put(index)

    def worker(device):
        while True:
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[index] = (function(items[index], device), None)
            except Exception as exc:
                results[index] = (None, exc)

    threads = [threading.Thread(target=worker, args=(device,), name=f'estimator-{device}')
               for device in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
