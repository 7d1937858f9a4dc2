"""Log lines that can never block or kill what they describe.

A daemon's stdout is often a pipe: `| head -1` closes it (every later write raises EPIPE), and a
harness that reads only the banner leaves it full (every later write blocks). Either would stop a
recorder that wrote its log from the thread that stores chunks. So each line goes into a bounded
queue that a thread of its own writes out; when the pipe is full the queue fills and lines are
dropped and counted, when the pipe is closed the rest is dropped, and nothing else waits.
"""

from __future__ import annotations

import os
import queue
import threading

#: lines held for a slow reader; past this they are dropped (and counted), never waited for
QUEUE_LINES = 10_000


class LineLog:
    """`log = LineLog(fd)`, then `log(line)` from any thread; it returns at once."""

    def __init__(self, fd: int, limit: int = QUEUE_LINES) -> None:
        self.fd = fd
        self.dropped = 0
        self.closed = False  # the reader went away (EPIPE): nothing more is written
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=limit)
        self._thread = threading.Thread(target=self._run, name=f"streamreplay-log-{fd}", daemon=True)
        self._thread.start()

    def __call__(self, line: str) -> None:
        if self.closed:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait((line + "\n").encode("utf-8", "backslashreplace"))
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait up to `timeout` for the queued lines to be written; False if the reader is too slow."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            try:
                if not self.closed:
                    self._write(data)
            except OSError:  # EPIPE and the like: the reader is gone for good
                self.closed = True
            finally:
                self._queue.task_done()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
