"""The teacher as a stage holds it: the one interface that TeacherClient (in this process, client.py) and
ProcessClient (in a child process, process.py) both implement, so a stage never asks which one it has; and
`encode_images`, the part of its contract both share (a request whose images cannot be encoded is never sent)."""

from __future__ import annotations

import concurrent.futures
from typing import Protocol

from pipeline.mbeir import images, reasons
from pipeline.teacher.outputs import TeacherResult
from pipeline.teacher.prompting import ImageLoader, TeacherRequest, materialize_images


class Teacher(Protocol):
    """Thread-safe; every future resolves to a TeacherResult, never to an exception."""

    @property
    def closed(self) -> bool:
        """True once close() began (or the client can answer no more)."""

    def submit(self, request: TeacherRequest, image_loader: ImageLoader | None = None
               ) -> concurrent.futures.Future[TeacherResult]:
        """Ask for one request. With `image_loader`, its deferred images are encoded first; one that cannot be
        is the request's failed result (unsafe_image_path or unreadable_image), never sent. Raises
        RuntimeError once closed."""

    def flush(self) -> None:
        """Make every answer received so far durable in the journal now (end of a bundle)."""

    def close(self) -> None:
        """Wait for every submitted request, then release the connections and flush the journal."""


def encode_images(request: TeacherRequest, loader: ImageLoader) -> TeacherRequest | TeacherResult:
    """The request with its deferred images encoded, or the failed result when an image cannot be (the file
    changed since the read-time check, or now leads out of the root): never sent, costs nothing."""
    try:
        return materialize_images(request, loader)
    except (ValueError, OSError) as e:
        code = e.reason if isinstance(e, images.ImageRejected) else reasons.UNREADABLE_IMAGE
        return TeacherResult(key=request.key, ok=False, error=code, detail=f"encoding an image for the call: {e}",
                             model=request.model, kind=request.kind)


def resolved(result: TeacherResult) -> concurrent.futures.Future[TeacherResult]:
    """A future that already holds `result`."""
    future: concurrent.futures.Future[TeacherResult] = concurrent.futures.Future()
    future.set_result(result)
    return future
