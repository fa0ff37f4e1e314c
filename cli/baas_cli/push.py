"""``baas image push``: a disk file's data sent as a new version, resumable.

The upload is a resumable upload resource (draft-ietf-httpbis-resumable-upload,
interop version 8; docs/uploads.md): created empty, then appended to with
PATCH. What was created is remembered in a state file
(``$XDG_STATE_HOME/baas/push/``), with the file's size and mtime: the next run
asks the server how many bytes it holds (HEAD) and sends only the rest, or
starts over, saying so, when the file changed in between. A server without
resumable uploads gets the same body in one request.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baas_cli import bodies
from baas_cli.config import state_dir
from baas_cli.errors import ApiError, LocalError, message_of
from baas_cli.wire import Answer, Interrupted, Piece, Sender, piece_length, pieces_from

INTEROP = "8"
RETRIES = 5
SAMPLE_SECONDS = 2.0  # --compress auto: how long the link is watched before choosing


class SwitchToZstd(Exception):
    """--compress auto found the link slower than compression: start again compressed."""


@dataclass
class PushOptions:
    note: str = ""
    digest: bool = False
    compress: str = "auto"
    limit_rate: int = 0
    restart: bool = False
    resumable: bool = True


@dataclass
class Report:
    """What the run did, for the progress bar and the JSON answer."""

    say: Callable[[str], None]
    on_sent: Callable[[int], None]
    set_total: Callable[[int], None]
    encoding: str = ""
    resumed_from: int = 0
    body_length: int | None = None
    restarted: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def state_file(url: str, image: str, path: Path) -> Path:
    key = hashlib.sha256(f"{url}\n{image}\n{path.resolve()}".encode()).hexdigest()[:32]
    return state_dir() / "push" / f"{key}.json"


class Push:
    def __init__(
        self, api: Any, image: dict[str, Any], path: Path, options: PushOptions, report: Report
    ) -> None:
        self.api, self.image, self.path = api, image, path
        self.options, self.report = options, report
        self.uuid = str(image["uuid"])
        self.state_path = state_file(api.profile.url, self.uuid, path)
        self.sender = Sender(
            api.profile.url,
            api.profile.token,
            limit_rate=options.limit_rate,
            on_sent=report.on_sent,
        )

    # --- The run ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        try:
            file = self.path.open("rb")
        except OSError as exc:
            raise LocalError(f"Cannot read {self.path}: {exc.strerror}") from exc
        with file, self._timings():
            stat = os.fstat(file.fileno())
            self.file, self.stat = file, stat
            self.layout = bodies.Layout.of(file.fileno())
            state = self._previous_state()
            try:
                return self._upload(state)
            except SwitchToZstd:
                self._forget(abandon=True)
                self.report.say("The link is slower than compression: sending it zstd-compressed.")
                return self._upload(None, encoding=bodies.ZSTD)

    @contextlib.contextmanager
    def _timings(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.report.extra["seconds_sending"] = round(self.sender.seconds_sending, 3)
            self.report.extra["seconds_waiting"] = round(self.sender.seconds_waiting, 3)

    def _upload(self, state: dict[str, Any] | None, encoding: str | None = None) -> dict[str, Any]:
        encoding = (state or {}).get("encoding") or encoding or self._choose_encoding()
        self.report.encoding = encoding
        self.frame_lengths: list[int] = list((state or {}).get("frames", []))
        if not self.options.resumable:
            return self._plain(encoding)
        if state is None:
            state = self._create(encoding)
            if state is None:
                return self._plain(encoding)
        for attempt in range(RETRIES + 1):
            try:
                return self._send(state)
            except Interrupted as exc:
                if attempt == RETRIES:
                    raise LocalError(f"{exc}. Run the same command again to resume.") from exc
                self.report.say(f"{exc}; resuming in {2**attempt} s.")
                time.sleep(2**attempt)
            except UploadGone as exc:
                self._forget(abandon=False)
                self.report.say(f"{exc} Starting over.")
                self.report.restarted = str(exc)
                return self._upload(None, encoding=encoding)
        raise AssertionError("unreachable")

    # --- State --------------------------------------------------------------------------

    def _previous_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if self.options.restart:
            self._forget(abandon=True, state=state)
            return None
        if (state.get("size"), state.get("mtime_ns")) != (self.stat.st_size, self.stat.st_mtime_ns):
            message = (
                f"{self.path} changed since the last attempt (its size or modification time): "
                "starting over."
            )
            self.report.say(message)
            self.report.restarted = message
            self._forget(abandon=True, state=state)
            return None
        return dict(state)

    def _save(self, state: dict[str, Any]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self.state_path)

    def _forget(self, *, abandon: bool, state: dict[str, Any] | None = None) -> None:
        if state is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                state = json.loads(self.state_path.read_text())
        if abandon and state and state.get("upload"):
            with contextlib.suppress(Exception):
                self.sender.request("DELETE", state["upload"], {}, length=0)
        self.state_path.unlink(missing_ok=True)

    # --- Choosing the encoding ----------------------------------------------------------

    def _choose_encoding(self) -> str:
        wanted = self.options.compress
        if wanted == "zstd" or not self.layout.sparse_possible():
            return bodies.ZSTD
        if wanted == "none" or not self.layout.extents:
            return bodies.SPARSE
        # Beside the sending, not before it: the choice comes SAMPLE_SECONDS later.
        self.sampling = threading.Thread(target=self._sample_compression, daemon=True)
        self.sampling.start()
        return bodies.SPARSE  # until the link proves slower than compression (_watch_link)

    def _sample_compression(self) -> None:
        """How fast one core compresses the file's first data, and how small it gets (on a
        thread: zstd releases the GIL, and its import and sample cost no time of the push)."""
        start, end = self.layout.extents[0]
        end = min(end, start + bodies.FRAME_DATA)
        maker = bodies.FrameMaker(self.file.fileno())
        began = time.perf_counter()
        frame = maker.frame((start, end, True))
        seconds = max(time.perf_counter() - began, 1e-6)
        cores = max(1, min(4, os.cpu_count() or 1))
        self.sample = {"ratio": len(frame) / (end - start), "rate": cores * (end - start) / seconds}
        self.report.extra["compression_sample"] = self.sample

    def _watch_link(self) -> Callable[[int], None] | None:
        """For --compress auto: a counter that stops the sparse upload when zstd would win."""
        if getattr(self, "sampling", None) is None:
            return None
        began, seen, decided = time.monotonic(), [0], [False]

        def watch(amount: int) -> None:
            seen[0] += amount
            elapsed = time.monotonic() - began
            sample = getattr(self, "sample", None)
            if elapsed < SAMPLE_SECONDS or decided[0] or sample is None:
                return
            decided[0] = True
            link = seen[0] / elapsed
            left = self.layout.data_bytes - seen[0]
            plain = left / link
            compressed = left * max(1 / sample["rate"], sample["ratio"] / link)
            self.report.extra["link_rate"] = link
            if compressed < 0.75 * plain:
                raise SwitchToZstd()

        return watch

    # --- Creating the upload ------------------------------------------------------------

    def _encoding_headers(self, encoding: str) -> dict[str, str]:
        if encoding == bodies.SPARSE:
            headers = {"Content-Type": "application/vnd.android.sparse-image"}
        else:
            headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "zstd"}
        if self.options.digest:
            headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(self._sha256()).decode()}:"
        return headers

    def _sha256(self) -> bytes:
        """The whole raw image's SHA-256: its data read, its holes hashed as zeros."""
        from diskimage import ZEROS
        from diskimage.holes import read_pieces

        digest, position = hashlib.sha256(), 0
        buffer = memoryview(bytearray(4 << 20))
        for start, end in [*self.layout.extents, (self.layout.size, self.layout.size)]:
            while position < start:
                step = min(len(ZEROS), start - position)
                digest.update(ZEROS[:step])
                position += step
            for piece in read_pieces(self.file.fileno(), position, end, buffer):
                digest.update(piece)
            position = max(position, end)
        return digest.digest()

    def _create(self, encoding: str) -> dict[str, Any] | None:
        """A new upload resource, remembered; None if the server has no resumable uploads."""
        headers = {
            **self._encoding_headers(encoding),
            "Upload-Draft-Interop-Version": INTEROP,
            "Upload-Complete": "?0",
        }
        if self.options.note:
            headers["BAAS-Note"] = urllib.parse.quote(self.options.note)
        if encoding == bodies.SPARSE:
            headers["Upload-Length"] = str(_total(bodies.sparse_pieces(self.layout)))
        answer = self.sender.request("POST", f"/api/image/{self.uuid}", headers, length=0)
        location = answer.header("location") or ""
        if answer.status == 201 and "/api/uploads/" in location:
            self.report.extra["resumable"] = True
            state = {
                "upload": location,
                "image": self.uuid,
                "encoding": encoding,
                "size": self.stat.st_size,
                "mtime_ns": self.stat.st_mtime_ns,
                "frames": [],
            }
            self._save(state)
            return state
        if answer.header("upload-draft-interop-version") or answer.status in (401, 403, 404, 413):
            raise _refusal(answer)
        return None  # an older server: one request

    # --- Sending ------------------------------------------------------------------------

    def _offset(self, upload: str) -> int:
        answer = self.sender.request(
            "HEAD", upload, {"Upload-Draft-Interop-Version": INTEROP}, length=0
        )
        if answer.status == 404:
            reason = self._why_gone(upload)
            raise UploadGone(reason)
        if answer.status >= 400:
            raise _refusal(answer)
        return int(answer.header("upload-offset") or 0)

    def _why_gone(self, upload: str) -> str:
        try:
            body = self.api.http.get(upload).json()
        except Exception:  # the reason is a courtesy: the 404 is what counts
            body = None
        detail = body.get("detail") if isinstance(body, dict) else None
        return str(detail or "The server no longer has this upload.")

    def _send(self, state: dict[str, Any]) -> dict[str, Any]:
        upload = state["upload"]
        self.report.extra["resumable"] = True
        offset = self._offset(upload) if state.get("started") else 0
        if not state.get("started"):
            state["started"] = True
            self._save(state)
        self.report.resumed_from = self.report.resumed_from or offset
        if offset:
            self.report.say(f"Resuming: the server holds {offset} bytes of this upload.")
        if state["encoding"] == bodies.SPARSE:
            return self._send_sparse(state, upload, offset)
        return self._send_zstd(state, upload, offset)

    def _patch(
        self,
        upload: str,
        offset: int,
        pieces: Iterable[Piece],
        length: int,
        *,
        complete: bool,
    ) -> Answer:
        headers = {
            "Content-Type": "application/partial-upload",
            "Upload-Offset": str(offset),
            "Upload-Complete": "?1" if complete else "?0",
            "Upload-Draft-Interop-Version": INTEROP,
        }
        return self.sender.request(
            "PATCH", upload, headers, pieces, length=length, source=self.file
        )

    def _send_sparse(self, state: dict[str, Any], upload: str, offset: int) -> dict[str, Any]:
        pieces = bodies.sparse_pieces(self.layout)
        total = _total(pieces)
        self.report.body_length = total
        self.report.set_total(total - offset)
        watch = self._watch_link() if not offset else None
        if watch is not None:
            report = self.sender.on_sent

            def both(amount: int) -> None:
                if report is not None:
                    report(amount)
                watch(amount)

            self.sender.on_sent = both
        while True:
            answer = self._patch(
                upload, offset, pieces_from(pieces, offset), total - offset, complete=True
            )
            moved = self._moved_offset(answer, offset, upload)
            if moved is None:
                return self._finished(answer)
            offset = moved
            self.report.set_total(total - offset)

    def _moved_offset(self, answer: Answer, offset: int, upload: str) -> int | None:
        """None when the answer ends the upload; else the offset to continue from."""
        if answer.status == 409 and answer.header("upload-offset") is not None:
            server = int(answer.header("upload-offset") or 0)
            if answer.header("retry-after"):  # another request still appends: wait, ask again
                time.sleep(min(30, int(answer.header("retry-after") or 5)))
                return self._offset(upload)
            self.report.say(
                f"The server holds {server} bytes, not {offset}: continuing from byte {server}."
            )
            return server
        if answer.status == 404:
            raise UploadGone(message_of(404, answer.json(), answer.body.decode(errors="replace")))
        if answer.status >= 500 and answer.header("upload-complete") != "?1":
            raise Interrupted(f"The server answered {answer.status} {answer.reason}")
        return None

    def _finished(self, answer: Answer) -> dict[str, Any]:
        if answer.status in (200, 201):
            self.state_path.unlink(missing_ok=True)
            return answer.json() or {}
        if answer.header("upload-complete") == "?1" or answer.status < 500:
            self.state_path.unlink(missing_ok=True)
        raise _refusal(answer)

    # --- zstd: frames in batches --------------------------------------------------------

    def _send_zstd(self, state: dict[str, Any], upload: str, offset: int) -> dict[str, Any]:
        segments = bodies.zstd_segments(self.layout)
        frames = bodies.FrameSource(self.file.fileno(), segments, state.get("frames", []))
        self.report.set_total(self._estimate(frames, offset))
        index, skip = frames.locate(offset)
        position = offset
        for batch, last in frames.batches(index, skip):
            length = sum(len(p) for p in batch)
            answer = self._patch(upload, position, batch, length, complete=last)
            state["frames"] = frames.lengths
            self._save(state)
            if answer.status == 204 and not last:
                position = int(answer.header("upload-offset") or position + length)
                continue
            moved = self._moved_offset(answer, position, upload)
            if moved is None:
                return self._finished(answer)
            return self._send_zstd(state, upload, moved)  # continue from where the server is
        raise LocalError("The upload ended without the server's answer.")

    def _estimate(self, frames: bodies.FrameSource, offset: int) -> int:
        ratio = getattr(self, "sample", {}).get("ratio", 0.5)
        guess = int(self.layout.data_bytes * ratio) + 4 * (self.layout.size >> 17)
        self.report.body_length = None
        return max(0, guess - offset)

    # --- One request (no resumable uploads, or a note) ---------------------------------

    def _plain(self, encoding: str) -> dict[str, Any]:
        headers = self._encoding_headers(encoding)
        source: Any = self.file
        if encoding == bodies.SPARSE:
            pieces: list[Piece] = bodies.sparse_pieces(self.layout)
            length: int | None = _total(pieces)
        else:  # compressed into a temporary file first: one request needs its length
            source = self._spooled_frames()
            length = os.fstat(source.fileno()).st_size
            pieces = [(0, length)]
        if self.options.note:
            pieces, length, headers = _multipart(pieces, length, self.options.note, headers)
        self.report.body_length = length
        self.report.set_total(length or self.layout.data_bytes)
        with contextlib.ExitStack() as stack:
            if source is not self.file:
                stack.enter_context(source)
            answer = self.sender.request(
                "POST", f"/api/image/{self.uuid}", headers, pieces, length=length, source=source
            )
        if answer.status in (200, 201):
            return answer.json() or {}
        raise _refusal(answer)

    def _spooled_frames(self) -> Any:
        import tempfile

        spool = tempfile.TemporaryFile(prefix="baas-push-")  # noqa: SIM115 -- returned open
        frames = bodies.FrameSource(self.file.fileno(), bodies.zstd_segments(self.layout), [])
        for batch, _last in frames.batches(0, 0):
            for frame in batch:
                spool.write(frame)
        spool.flush()
        return spool


class UploadGone(LocalError):
    """The server no longer has the upload (expired, abandoned, finished)."""


def _total(pieces: list[Piece]) -> int:
    return sum(piece_length(p) for p in pieces)


def _refusal(answer: Answer) -> ApiError:
    text = answer.body.decode("utf-8", "replace")
    return ApiError(answer.status, message_of(answer.status, answer.json(), text), answer.json())


def _multipart(
    pieces: Any, length: int | None, note: str, headers: dict[str, str]
) -> tuple[Any, int | None, dict[str, str]]:
    boundary = "baas-" + os.urandom(12).hex()
    name = "disk.simg" if headers.get("Content-Encoding") != "zstd" else "disk.img.zst"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\n{note}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: {headers.get('Content-Type', 'application/octet-stream')}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    body = [head, *pieces, tail]
    total = None if length is None else length + len(head) + len(tail)
    new = {k: v for k, v in headers.items() if k not in ("Content-Type", "Content-Encoding")}
    new["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    return body, total, new
