"""Decoding and resizing in processes of their own (CAPTIONER_DECODE_PROCESSES).

On a GPU host the model's thread needs the GIL to launch every kernel, and decoding threads in the same
process hold it for Pillow's Python parts, which slows the model path on a GPU host
(bench/results/2026-11-29-gpu-h200.md). Processes take that work off the worker's GIL; what comes back is the
fitted image, the same pixels the worker's own decoding gives (tests check it).

Each process decodes one image at a time and shares two buffers with the worker (memory-backed files in
/dev/shm): the encoded bytes go in through one, the fitted pixels come back through the other, and only a small
tuple travels through its pipe. Pickling the bytes and the image through pipes, as ProcessPoolExecutor does,
costs the worker's own process far more CPU per image than this pool does, as numpy copies the bytes in and the
pixels out without the GIL, and the pixels come back as an array, which the batch takes without the GIL too
(`python -m bench.decode_pool` measures it all; BENCHMARKS.md, "Decoding in processes"). For bulk images and
uploads kept in S3, a process also fetches the object itself, from a presigned URL (`fetch_and_decode`): a boto3
GET would cost the worker's process far more Python per image than presigning one (`python -m bench.s3_get`;
BENCHMARKS.md, "Bulk, local stack").

Because a process has one image at a time, a process that dies names its image. It is replaced and the image
tried once more on the new process (something else may have killed it: the kernel's OOM killer, say); if that
one dies too, the image is reported as undecodable. A process that spends longer than `timeout_s` on one image
is killed and its image reported likewise. One bad file fails alone; the worker lives.

The buffers' space is reserved when they are made, so a full /dev/shm (64 MB in a container by default) is a
clear error instead of a SIGBUS on the first write: at start, the pool fails and says how much it needs (the
worker then decodes on its threads, or stops if a number of processes was asked for); for an image larger than
any buffer that still fits, and for a lost process that cannot be restarted, the calling thread decodes.

The processes run at a lower priority (DECODING_NICENESS) than the worker: where cores run short, the thread
that launches the model's kernels goes first, as the GPU's time costs more than a core's.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import pickle
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image

from common.errors import ImageDecodeError
from worker.decode.base import BatchItem, DecodedBatch, StoredObject
from worker.decode.images import decode_fitted
from worker.model.fit import HostImage

if TYPE_CHECKING:
    from common.errors import Unreadable

log = logging.getLogger(__name__)

# Far longer than any image within worker.decode.images' bounds takes (the largest decode in well under a second).
DEFAULT_TIMEOUT_S = 60.0
# How much less CPU priority the decoding processes take than the worker (nice). A process may always lower its
# own. At the worker's priority, decoding processes slow a thread launching small torch ops beside them, the
# more so the more processes; at 10 that thread keeps more of its speed and the decoding alone is as fast
# (`python -m bench.decode_pool --niceness 0 10`; BENCHMARKS.md, "Decoding in processes").
DECODING_NICENESS = 10
# A process's input buffer starts here (a 640x480 JPEG is about 100 KB, a 12 MP photo 3-6 MB) and doubles past
# the largest image it is given.
INITIAL_INPUT_BYTES = 1 << 20
# Memory-backed where there is such a place (Linux), so the buffers never touch a disk.
SHARED_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
# How long a new process may take to start (import Pillow and numpy, attach its buffers) before it counts as hung.
_START_TIMEOUT_S = 120.0
# What a fetch may add to an image's time: object_fetch's worst case is 4 tries of a 5 s connect and a 30 s read.
_FETCH_TIMEOUT_S = 4 * 35.0
# How long a stopping process may take to finish its image and exit before it is killed.
_STOP_GRACE_S = 5.0

Work = Callable[..., Image.Image]


class ProcessDecoding:
    """The Decoding that fetches and decodes in a DecodePool's processes (worker/decode/base.py)."""

    def __init__(self, pool: DecodePool) -> None:
        self.pool = pool

    def load(self, source: bytes | StoredObject) -> BatchItem:
        if isinstance(source, StoredObject):
            return self.pool.fetch_and_decode(source.presigned(), source.max_bytes, source.unreadable)
        return self.pool.decode(source)

    def finish(self, items: Sequence[BatchItem]) -> DecodedBatch:
        return DecodedBatch.of(items)

    def close(self) -> None:
        self.pool.close()


class DecodePool:
    """`decode(data)` on one of `processes` spawned processes; safe to call from many threads.

    A process belongs to the thread that took it from the idle queue until that thread puts it back: only that
    thread touches its pipe and buffers. `close` stops the idle ones and leaves each busy one to its thread."""

    def __init__(self, processes: int, size: tuple[int, int], resample: Image.Resampling, *,
                 work: Work = decode_fitted, timeout_s: float = DEFAULT_TIMEOUT_S,
                 niceness: int = DECODING_NICENESS) -> None:
        # `work` runs in the processes: a module-level function, so that spawned processes can import it.
        self.processes = processes
        self._task = _Task(work, size, resample, niceness)
        self._timeout_s = timeout_s
        self._warned = False
        self._closed = False
        self._busy = 0
        self._changed = threading.Condition()  # guards the three fields below
        # None: a slot whose process died and could not be restarted yet; the next thread to take it tries again.
        self._idle: list[_DecodingProcess | None] = []
        try:
            for _ in range(processes):
                self._idle.append(_DecodingProcess(self._task))
        except BaseException:
            self.close()  # the ones that did start
            raise

    def decode(self, data: bytes) -> HostImage:
        """The fitted image's pixels, [height, width, 3] RGB (an array: copying it into a batch needs no GIL);
        per-image problems raise ImageError, as decoding on the calling thread would."""
        return self._on_a_process(data, lambda: self._task.run(data))

    def fetch_and_decode(self, url: str, max_bytes: int, unreadable: Unreadable | None = None) -> HostImage:
        """`decode` of the object a presigned GET `url` gives (worker/decode/fetch.py: its errors, `unreadable`
        there), fetched by the decoding process itself, so the GET's Python runs off the worker's GIL too."""
        fetch = _Fetch(url, max_bytes, unreadable)
        return self._on_a_process(fetch, lambda: self._task.run(_fetch(fetch)))

    def _on_a_process(self, work: bytes | _Fetch, here: Callable[[], HostImage]) -> HostImage:
        """`work` done by a process of the pool, or by `here` on the calling thread when none can do it."""
        return self._run_on(self._take(), work, here)

    def _run_on(
        self, process: _DecodingProcess | None, work: bytes | _Fetch, here: Callable[[], HostImage]
    ) -> HostImage:
        """`work` on `process` (taken from the idle list; None: its slot's process was lost), given back after."""
        try:
            for attempt in (1, 2):
                if process is None and (process := self._restart()) is None:
                    return here()
                try:
                    return process.decode(work, self._timeout_s)
                except _NoRoom:
                    self._warn_once("no room in %s for a %d-byte image: decoding it, and others like it, on the "
                                    "calling thread", SHARED_DIR, len(work) if isinstance(work, bytes) else 0)
                    return here()
                except _ProcessLost as lost:
                    process.stop(kill=True)
                    process = None
                    if lost.hung:
                        raise ImageDecodeError(
                            f"Decoding this image took longer than {self._timeout_s:g} s; it was stopped."
                        ) from None
                    if attempt == 2:
                        raise ImageDecodeError("A decoding process died on this image; it cannot be decoded.") from None
                    log.warning("a decoding process died; trying its image once more on a new one")
            raise AssertionError("unreachable")
        finally:
            self._give_back(process)

    def close(self) -> None:
        """Stop the idle processes and free their buffers; wait a few seconds at most for the busy ones, which
        their threads stop when their images are done."""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._changed.notify_all()
        for process in idle:
            if process is not None:
                process.stop()
        with self._changed:
            self._changed.wait_for(lambda: self._busy == 0, timeout=_STOP_GRACE_S)

    def _restart(self) -> _DecodingProcess | None:
        """A new process for a slot whose process was lost, or None (logged) when none can start now: no room in
        /dev/shm, no more processes allowed. The caller then decodes on its own thread; the slot stays empty."""
        try:
            return _DecodingProcess(self._task)
        except (RuntimeError, OSError) as exc:
            self._warn_once("could not start a decoding process (%s): decoding on the calling thread until one "
                            "starts", exc)
            return None

    def _warn_once(self, message: str, *args: object) -> None:
        """A warning the first time, then debug lines: a full /dev/shm would otherwise log once per image."""
        log.log(logging.DEBUG if self._warned else logging.WARNING, message, *args)
        self._warned = True

    def _take(self) -> _DecodingProcess | None:
        with self._changed:
            self._changed.wait_for(lambda: self._idle or self._closed)
            if self._closed:
                raise RuntimeError("the decoding pool is closed: the worker is stopping")
            self._busy += 1
            return self._idle.pop()

    def _give_back(self, process: _DecodingProcess | None) -> None:
        with self._changed:
            self._busy -= 1
            if not self._closed:
                self._idle.append(process)
                # One waiter for one slot: with dozens of threads waiting (bulk fetch threads), waking them all
                # for each image cost the worker's process more CPU than the decoding it handed off.
                self._changed.notify()
                return
            self._changed.notify_all()  # close() waits for the busy count to reach 0
        if process is not None:
            process.stop()


class _ProcessLost(Exception):
    def __init__(self, hung: bool) -> None:
        super().__init__("hung" if hung else "died")
        self.hung = hung


@dataclass(frozen=True)
class _Fetch:
    """A request for the process to fetch the image itself (a presigned GET) instead of reading its buffer."""

    url: str
    max_bytes: int
    unreadable: Unreadable | None


class _NoRoom(Exception):
    """The image does not fit the process's input buffer, and /dev/shm has no room for a larger one."""


@dataclass(frozen=True)
class _Task:
    """What the processes do to each image's bytes (pickled to each process when it starts)."""

    work: Work
    size: tuple[int, int]
    resample: Image.Resampling
    niceness: int  # added to the process's own, once it starts

    def run(self, data: bytes) -> Image.Image:
        return self.work(data, size=self.size, resample=self.resample)


class _SharedBuffer:
    """A memory-backed file mapped by the worker and by one decoding process.

    Its space is reserved when it is made (posix_fallocate), so a full /dev/shm fails here, as an OSError, not
    later as a SIGBUS. The worker unlinks the file once the process has mapped it, so nothing is left in /dev/shm
    even when both are killed."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        """Map the file at `path` (in the process) or the one just made at `path` and open as `fd` (in the worker)."""
        self.path, self.linked = path, True
        if fd is None:
            fd = os.open(path, os.O_RDWR)
        try:
            self.size = os.fstat(fd).st_size
            self.memory = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, size: int) -> _SharedBuffer:
        fd, path = tempfile.mkstemp(prefix="captioner-decode-", dir=SHARED_DIR)
        try:
            os.posix_fallocate(fd, 0, size)
            return cls(path, fd)
        except BaseException:
            os.unlink(path)
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def unlink(self) -> None:
        if self.linked:
            self.linked = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def close(self) -> None:
        self.unlink()
        self.memory.close()


class _DecodingProcess:
    """One spawned process, its pipe and its two buffers; used by one thread at a time."""

    def __init__(self, task: _Task) -> None:
        self._size = size = task.size
        self._stopped = False
        self._started = False
        try:
            self._input = _SharedBuffer.create(INITIAL_INPUT_BYTES)
            try:
                self._output = _SharedBuffer.create(size[0] * size[1] * 3)
            except OSError:
                self._input.close()
                raise
        except OSError as exc:
            raise RuntimeError(
                f"no room for a decoding process's buffers in {SHARED_DIR} ({exc.strerror}): each process needs "
                f"{(INITIAL_INPUT_BYTES + size[0] * size[1] * 3) / 2**20:.1f} MiB at least, and more for large "
                "images; give it more shared memory (docker run --shm-size, compose shm_size) or set "
                "CAPTIONER_DECODE_PROCESSES lower"
            ) from exc
        # spawn: a forked child of a process that has initialised CUDA cannot use it, and need not load torch.
        context = get_context("spawn")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child_end, self._input.path, self._output.path, task),
            name="captioner-decode", daemon=True,
        )
        try:
            self._process.start()
        except BaseException:
            self._conn.close()
            self._input.close()
            self._output.close()
            raise
        finally:
            child_end.close()  # so that the child's death reads as end-of-file here

    def decode(self, work: bytes | _Fetch, timeout_s: float) -> npt.NDArray[np.uint8]:
        """The pixels of `work`: bytes, passed through the input buffer, or an object the process fetches."""
        try:
            if not self._started:
                # First, the process maps the buffers it was started with: they must not be replaced before.
                # The image's time starts when the process is ready for it.
                if not self._conn.poll(_START_TIMEOUT_S):
                    raise _ProcessLost(hung=False)  # not this image's doing: it is tried on another process
                self._conn.recv()
                self._started = True
                self._input.unlink()  # both are mapped there now
                self._output.unlink()
            if isinstance(work, _Fetch):
                self._conn.send(work)
            else:
                grown = self._fit_input(len(work))
                # numpy copies without the GIL; the views die with the statement, so the buffer can close later.
                np.frombuffer(self._input.memory, np.uint8, count=len(work))[:] = np.frombuffer(work, np.uint8)
                self._conn.send((len(work), grown))
            # A slow S3 must not read as a hung decoder (a per-image error): the fetch has its own timeouts.
            if not self._conn.poll(timeout_s + (_FETCH_TIMEOUT_S if isinstance(work, _Fetch) else 0.0)):
                raise _ProcessLost(hung=True)
            error: Exception | None = self._conn.recv()
        except (EOFError, OSError):
            raise _ProcessLost(hung=False) from None
        self._input.unlink()  # mapped there now, if it was new
        if error is not None:
            raise error
        width, height = self._size
        # A copy (without the GIL) that outlives the buffer's next use; the view dies with the statement.
        return np.frombuffer(self._output.memory, np.uint8).reshape(height, width, 3).copy()

    def _fit_input(self, length: int) -> str | None:
        """The path of a new, larger input buffer when `length` bytes do not fit the current one, else None."""
        if length <= self._input.size:
            return None
        try:
            bigger = _SharedBuffer.create(max(length, 2 * self._input.size))
        except OSError as exc:
            raise _NoRoom from exc
        self._input.close()  # the process keeps its mapping until it maps the new one
        self._input = bigger
        return bigger.path

    def stop(self, kill: bool = False) -> None:
        """End the process (asking first unless `kill`) and free both buffers; again, it does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if not kill:
            with contextlib.suppress(OSError):  # already gone
                self._conn.send(None)
            self._process.join(_STOP_GRACE_S)
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._conn.close()
        self._input.close()
        self._output.close()


def _serve(conn: Connection, input_path: str, output_path: str, task: _Task) -> None:
    """The decoding process: decode what each request names, put the pixels in the output buffer, reply with
    None or the per-image error; stop on None or when the worker's end of the pipe closes."""
    _keep_freed_memory()
    os.nice(task.niceness)
    input_buffer, output_buffer = _SharedBuffer(input_path), _SharedBuffer(output_path)
    conn.send(None)  # ready
    while True:
        try:
            request = conn.recv()
        except EOFError:
            break
        if request is None:
            break
        try:
            if isinstance(request, _Fetch):
                data = _fetch(request)
            else:
                length, grown = request
                if grown is not None:
                    input_buffer.memory.close()
                    input_buffer = _SharedBuffer(grown)
                data = input_buffer.memory[:length]
            image = task.run(data)
            if image.mode != "RGB" or image.size != task.size:
                raise RuntimeError(f"decoding gave a {image.mode} image of {image.size}, not RGB at {task.size}")
            output_buffer.memory[:] = image.tobytes()
        except Exception as exc:  # every failure goes back to the thread that asked, which raises it
            conn.send(_sendable(exc))
        else:
            conn.send(None)


def _keep_freed_memory() -> None:
    """Fixed glibc malloc thresholds for this process: with the default, adaptive ones, a process that only
    decodes gave its freed buffers back to the kernel after each image and faulted them in again for the next,
    decoding markedly slower than a thread (the worker's own process, whose heap holds much else, did not;
    bench/results/2026-11-29-decode-processes.md).
    Blocks of 16 MiB or more are still mapped and unmapped on their own, and up to 32 MiB of free heap is kept."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return  # not glibc: its own allocator, its own habits
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 16 << 20)
    mallopt(m_trim_threshold, 32 << 20)


def _fetch(request: _Fetch) -> bytes:
    # Imported here: the benches for GPU machines import this module, and those have no urllib3 to give.
    from worker.decode.fetch import fetch_object

    return fetch_object(request.url, request.max_bytes, request.unreadable)


def _sendable(exc: Exception) -> Exception:
    """`exc` if it survives pickling (the service's errors do), else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"decoding failed: {exc!r}")
    return exc
