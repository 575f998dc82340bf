"""Ordered read-ahead: prepare the next items on one background thread while the caller uses this one.

    with contextlib.closing(read_ahead(decode_and_preprocess, jobs, depth=1)) as results:
        for job, result in results:
            ...  # decode_and_preprocess(job), or the exception it raised (report it and go on)

``edge-classify --image`` decodes and preprocesses the next image here while the model runs on the
current one: on a GPU the CPU work hides behind inference, and on a CPU the model gets the other cores
(see ``edge.cli.run_images``). Results come back in the order of ``jobs``. At most ``depth`` results
wait beside the one being prepared, so memory stays bounded. With ``depth`` 0 everything runs inline.

When the reader stops early (an error, ``| head``, Ctrl-C) the generator's ``finally`` waits for the
worker to finish the job in hand: a thread still inside OpenCV when the interpreter exits is ended
by ``pthread_exit`` through C++ frames, which aborts the process (exit 134 instead of 141 or 130).
"""

import queue
import threading
from typing import Callable, Iterable, Iterator, Tuple, TypeVar, Union

Job = TypeVar("Job")
Result = TypeVar("Result")

_DONE = object()
_POLL_S = 0.2  # how often a blocked worker checks whether the reader has gone


def read_ahead(prepare: Callable[[Job], Result], jobs: Iterable[Job],
               depth: int) -> Iterator[Tuple[Job, Union[Result, BaseException]]]:
    """``(job, prepare(job))`` in order, ``prepare`` running up to ``depth`` jobs ahead on one thread.

    Close the generator (``contextlib.closing``) when leaving it early, so the worker is waited for."""
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
            if isinstance(entry, _Failed):
                raise entry.error
            yield entry
    finally:
        stop.set()  # the reader stopped early: the worker ends at its next put, after the job in hand
        worker.join()


class _Failed:
    """Iterating the jobs themselves failed: the reader raises ``error`` where it stands."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _work(prepare: Callable, jobs: Iterable, ready: "queue.Queue", stop: threading.Event) -> None:
    end: object = _DONE
    try:
        for job in jobs:
            if not _put(ready, (job, _attempt(prepare, job)), stop):
                return
    except BaseException as exc:  # never leave the reader waiting for an end that will not come
        end = _Failed(exc)
    _put(ready, end, stop)


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
    except BaseException as exc:  # handed to the reader, which reports it in order (or re-raises a bug)
        return exc
