"""S3-compatible object storage through boto3: a resuming read stream (the ``s3://`` gopen handler of the
shard reader), byte-range reads, and the small writes and uploads the shard builder needs.

- One client per process, made lazily (a forked DataLoader worker makes its own: clients are not fork-safe)
  from the standard AWS environment: ``AWS_ENDPOINT_URL_S3`` for an S3-compatible server, credentials,
  region. botocore's "standard" retry mode retries failed requests (5xx, throttling such as SlowDown,
  connection errors) with exponential backoff and jitter.
- A body that breaks mid-stream (connection reset or cut, a read timeout, fewer bytes than the response
  announced) is not covered by botocore's retries: ``S3Stream`` re-issues the GET with
  ``Range: bytes=<position>-<end>`` from the exact byte it reached, with backoff, up to MAX_RESUMES times in a
  row, so no byte is lost or delivered twice. Resumed GETs carry ``If-Match: <ETag of the first response>``:
  an object replaced meanwhile fails the read (412) instead of being spliced from two versions; the ETag of
  every response is compared too (for servers that ignore If-Match), and so is its length with the range
  asked for (a range past the object's end fails naming both, instead of retrying).
- Connections: a body read to its end goes back to botocore's pool as it is; a broken or abandoned one is
  closed first, so no unread remainder reaches the next request made on that connection.
- Speed (tests/benchmarks/s3_read.py, profiled with its --profile): tarfile's stream mode reads its input
  10 KiB at a time. Handed to boto3's StreamingBody directly (the benchmark's ``plain handler``, 40-47% of a
  raw download here), every one of those reads goes through botocore's checksum wrapper, urllib3 and
  http.client: 11k read calls and 14k socket reads for 113 MB, more than half the time outside the socket.
  Here an io.BufferedReader of CHUNK bytes sits in front of a raw stream that reads up to CHUNK bytes per
  call from urllib3 (36 calls for the same 113 MB). Measured chunk sizes: 256 KiB 71%, 512 KiB 84%, 1 MiB
  88-90%, 4 MiB 80%, 16 MiB 79% of raw boto3 (larger reads keep the server waiting while the reader parses).
  A read-ahead thread was tried and dropped: it contends with the parser for the GIL (75% against 80-85%).
  Reading urllib3's response directly also skips botocore's response-checksum check (CRC32 of whole-object
  GETs whose upload stored one; none on Range GETs): 37 ms per 113 MB, 13% of the pipeline's time here; and
  lengths, ETags and TCP's own checksums remain.
No pickle, no subprocess (``pipe:`` URLs start a CLI process per shard, 0.6 s each here).
"""
from __future__ import annotations

import concurrent.futures
import io
import os
import random
import threading
import time
from typing import Any

CHUNK = 1 << 20  # bytes per read from the network, and the read buffer's size
MAX_RESUMES = 8  # Range re-GETs in a row (without progress) before a stream gives up
_clients: dict[tuple[int, str | None, bool], Any] = {}
_lock = threading.Lock()


def split_url(url: str) -> tuple[str, str]:
    """("bucket", "key/of/object") of "s3://bucket/key/of/object"."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ValueError(f"s3 URL {url!r} must name a bucket and a key: s3://bucket/key")
    return bucket, key


def client(*, probe: bool = False) -> Any:
    """This process's S3 client (made on first use; endpoint and credentials from the AWS environment). A new
    one is made when AWS_ENDPOINT_URL_S3 has changed since: a client keeps the endpoint it was made with.
    ``probe``: a client that gives up within seconds (3 attempts, 5 s to connect), for checks made before a
    run starts, where an unreachable endpoint must be an error now rather than after minutes of retries."""
    owner = (os.getpid(), os.environ.get("AWS_ENDPOINT_URL_S3"), probe)
    with _lock:
        if owner not in _clients:
            import boto3
            import botocore.config

            if probe:
                config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 3},
                                                connect_timeout=5, read_timeout=20)
            else:
                config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 10},
                                                max_pool_connections=32, connect_timeout=10, read_timeout=60)
            for old in [key for key in _clients if key[:2] != owner[:2]]:
                del _clients[old]  # a parent's client is never used in a forked child, nor an old endpoint's
            _clients[owner] = boto3.session.Session().client("s3", config=config)
        return _clients[owner]


def endpoint() -> str:
    """The S3 endpoint in use, for messages (credentials masked)."""
    from uda_dist.redact import redact

    return redact(os.environ.get("AWS_ENDPOINT_URL_S3") or "AWS S3 (no AWS_ENDPOINT_URL_S3)")


class S3Stream(io.RawIOBase):
    """The bytes [start, end) of an object (end None = to its end) as a raw stream that resumes a broken
    body with a Range GET from the byte it reached."""

    def __init__(self, url: str, start: int = 0, end: int | None = None):
        super().__init__()
        self.url, (self.bucket, self.key) = url, split_url(url)
        self.pos, self.end = start, end
        self.etag: str | None = None
        self.body: Any = None
        self.resumes = 0  # Range re-GETs after a broken body (for tests and logs)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        failures = 0
        while len(view) and (self.end is None or self.pos < self.end):
            if self.body is None:
                self._get()
                continue
            try:
                count = self.body.readinto(view[: self._want(len(view))])
            except Exception as exc:  # noqa: BLE001 - any broken body is resumed, up to MAX_RESUMES
                count, error = 0, exc
            else:
                error = EOFError(f"body ended at byte {self.pos} of {self.end}") if count == 0 else None
            if error is None:
                self.pos += count
                if self.pos == self.end:
                    self._drop_body(finished=True)
                return count
            failures += 1
            self._drop_body()
            if failures > MAX_RESUMES:
                raise OSError(f"{self.url}: the stream broke {failures} times at byte {self.pos}: {error!r}") from error
            self.resumes += 1
            time.sleep(min(2.0, 0.05 * 2 ** failures) * (0.5 + random.random()))
        return 0

    def readall(self) -> bytes:
        """The rest of the stream in CHUNK-sized reads (io.RawIOBase's own readall reads 8 KiB at a time)."""
        parts, buffer = [], bytearray(CHUNK)
        while count := self.readinto(buffer):
            parts.append(bytes(buffer[:count]))
        return b"".join(parts)

    def _want(self, room: int) -> int:
        return room if self.end is None else min(room, self.end - self.pos)

    def _get(self) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self.pos or self.end is not None:
            args["Range"] = f"bytes={self.pos}-" + ("" if self.end is None else str(self.end - 1))
        if self.etag is not None:
            args["IfMatch"] = self.etag
        try:
            response = client().get_object(**args)
        except Exception as exc:
            raise OSError(f"GET {self.url} (from byte {self.pos}) failed: {exc}") from exc
        self.body = response["Body"]._raw_stream  # urllib3's response: readinto without botocore's wrapper
        etag, length = response["ETag"], int(response["ContentLength"])
        if self.end is None:
            self.end = self.pos + length
        problem = None
        if self.etag is not None and etag != self.etag:  # a server that ignores If-Match
            problem = f"the object changed while it was read (ETag {self.etag} -> {etag})"
        elif length != self.end - self.pos:
            problem = f"asked for bytes [{self.pos}, {self.end}), the server sent {length} (object too short?)"
        if problem is not None:
            self._drop_body()
            raise OSError(f"GET {self.url} (from byte {self.pos}): {problem}")
        self.etag = etag

    def _drop_body(self, finished: bool = False) -> None:
        """Give the connection back to the pool: as it is after a complete body; closed after a broken or
        abandoned one, so that no unread remainder reaches the next request made on it."""
        body, self.body = self.body, None
        if body is None:
            return
        try:
            if not finished:
                body.close()
            body.release_conn()
        except Exception:  # noqa: BLE001 - the connection is broken already
            pass

    def close(self) -> None:
        self._drop_body()
        super().close()


def open_read(url: str, start: int = 0, length: int | None = None) -> io.BufferedReader:
    """A buffered, resuming stream of the object (or of its bytes [start, start + length))."""
    stream = S3Stream(url, start, None if length is None else start + length)
    return io.BufferedReader(stream, buffer_size=CHUNK)


def open_range(url: str, start: int, length: int) -> io.BufferedReader:
    return open_read(url, start, length)


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> io.BufferedReader:
    """webdataset's gopen handler for s3:// (read only)."""
    if mode != "rb":
        raise ValueError(f"s3:// shards are opened for reading only (mode {mode!r} asked for {url}); write "
                         f"locally and upload with uda_dist.data.s3.upload_files (python -m shards build does)")
    return open_read(url)


def register() -> None:
    """Install gopen_s3 as webdataset's handler for s3:// URLs (idempotent; per process)."""
    from webdataset.gopen import gopen_schemes

    gopen_schemes["s3"] = gopen_s3


def read_bytes(url: str) -> bytes:
    with open_read(url) as stream:
        return stream.read()


def write_bytes(url: str, data: bytes) -> None:
    bucket, key = split_url(url)
    client().put_object(Bucket=bucket, Key=key, Body=data)


def put(location: str, data: bytes) -> None:
    """``data`` at a local path (written to a temporary name, then renamed, its folder made) or an s3:// URL
    (one PUT): a reader never sees half of it."""
    if location.startswith("s3://"):
        write_bytes(location, data)
        return
    os.makedirs(os.path.dirname(location) or ".", exist_ok=True)
    with open(location + ".tmp", "wb") as f:
        f.write(data)
    os.replace(location + ".tmp", location)


def remove(location: str) -> None:
    """Remove a local file or an s3:// object when it is there; an endpoint that cannot be reached or refuses
    is a RunError naming it."""
    if not location.startswith("s3://"):
        if os.path.exists(location):
            os.remove(location)
        return
    import botocore.exceptions

    from uda_dist.errors import RunError

    if not exists(location):  # asked with the probe client: a bad endpoint or bucket fails here, in one line
        return
    bucket, key = split_url(location)
    try:
        client().delete_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        raise RunError(f"cannot remove {location}: {exc.response.get('Error', {}).get('Code')}") from None


def exists(url: str) -> bool:
    """Whether the object is there, asked with the probe client: RunError naming the endpoint when it cannot
    be reached or refuses the request (credentials, permissions, a missing bucket)."""
    import botocore.exceptions

    from uda_dist.errors import RunError

    bucket, key = split_url(url)
    try:
        client(probe=True).head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        raise RunError(f"the S3 endpoint {endpoint()} refused HEAD {url}: {code} "
                       f"({exc.response.get('Error', {}).get('Message') or 'no message'})") from None
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        from uda_dist.redact import redact

        reason = redact(str(exc)).split(": ")[0]  # botocore's sentence, without the URL it repeats
        raise RunError(f"cannot reach the S3 endpoint {endpoint()} for {url}: {reason}") from None
    return True


def upload_files(pairs: list[tuple[str, str]], *, concurrency: int = 8) -> None:
    """Upload (local path, s3 URL) pairs, several files at once, each by boto3's managed transfer (multipart
    above 64 MiB, parts in parallel, retried). Raises naming every file that failed."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4)

    def upload(pair: tuple[str, str]) -> None:
        bucket, key = split_url(pair[1])
        client().upload_file(pair[0], bucket, key, Config=config)

    with concurrent.futures.ThreadPoolExecutor(max(1, min(concurrency, len(pairs)))) as pool:
        futures = {pool.submit(upload, pair): pair for pair in pairs}
    failed = [(pair, future.exception()) for future, pair in futures.items() if future.exception() is not None]
    if failed:
        raise OSError(f"{len(failed)} of {len(pairs)} uploads failed: "
                      + "; ".join(f"{path} -> {url}: {exc!r}" for (path, url), exc in failed))
