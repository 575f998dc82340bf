"""Ordered read-ahead: prepare the next items on one background thread while the caller uses this one.

    for job, result in read_ahead(decode_and_preprocess, jobs, depth=1):
        ...  # result is decode_and_preprocess(job), or the Exception it raised (report it and go on)

``edge-classify --image`` decodes and preprocesses the next image here while the model runs on the
current one: on a GPU the CPU work hides behind inference, and on a CPU the model gets the other cores
(see ``edge.cli.run_images``). Results come back in the order of ``jobs``. At most ``depth`` results
wait beside the one being prepared, so memory stays bounded. With ``depth`` 0 everything runs inline.
The worker is a daemon thread: a run that is interrupted, or whose reader goes away, does not wait
for the image it is decoding.
"""

import queue
import threading
from typing import Callable, Iterable, Iterator, Tuple, TypeVar, Union

Job = TypeVar("Job")
Result = TypeVar("Result")

_DONE = object()
_POLL_S = 0.2  # how often a blocked worker checks whether the reader has gone


def read_ahead(prepare: Callable[[Job], Result], jobs: Iterable[Job],
               depth: int) -> Iterator[Tuple[Job, Union[Result, Exception]]]:
    """``(job, prepare(job))`` in order, ``prepare`` running up to ``depth`` jobs ahead on one thread."""
    if depth <= 0:
        for job in jobs:
            yield job, _attempt(prepare, job)
        return
    ready: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    worker = threading.Thread(target=_work, args=(prepare, jobs, ready, stop), name="edge-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            entry = ready.get()
            if entry is _DONE:
                return
            yield entry
    finally:
        stop.set()  # the reader stopped early (an error, a closed pipe): the worker ends at its next put


def _work(prepare: Callable, jobs: Iterable, ready: "queue.Queue", stop: threading.Event) -> None:
    for job in jobs:
        if not _put(ready, (job, _attempt(prepare, job)), stop):
            return
    _put(ready, _DONE, stop)


def _put(ready: "queue.Queue", entry: object, stop: threading.Event) -> bool:
    """Queue ``entry`` once there is room; False if the reader has stopped meanwhile."""
    while not stop.is_set():
        try:
            ready.put(entry, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _attempt(prepare: Callable, job: object) -> object:
    try:
        return prepare(job)
    except Exception as exc:  # handed to the reader, which reports it in order (or re-raises a bug)
        return exc
