"""Fetch a known release once into the cache, verify it, and never hand out an unverified file.

Layout: PPFLOW_HOME/releases/NAME/FILE (or `to=DIR`), plus
    FILE.part         an unfinished transfer; the next fetch resumes it with an HTTP Range request
    FILE.part.json    the server's validator of that transfer (strong ETag or Last-Modified): a resume sends it as
                      If-Range, so a file that changed on the server is downloaded again, never spliced
    FILE.sha256.json  what the file was verified against: {"sha256", "size", "source", "mtime_ns", ...}
    FILE.lock         held (flock) while a process downloads, so two processes never write one .part

A finished transfer is hashed before it is renamed into place: a wrong hash deletes it and fails; a transfer that
stops early keeps the .part and says how to resume. Where the authors publish no SHA-256, the first download's
hash is recorded ("trust on first use", said out loud) and every later download and load must match it; a damaged
record is an error naming it (`rerecord=True` trusts the file as it is now). A cached file is re-hashed whenever its
size or modification time differs from the record.

Downloads are off with PPFLOW_OFFLINE=1 or HF_HUB_OFFLINE=1 (cached files still load).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io import CHUNK, one_line, remove_quietly, sha256_file, write_text_atomic
from .registry import Release, get_release, release_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

OFFLINE_ENVS = ("PPFLOW_OFFLINE", "HF_HUB_OFFLINE")
RECORD_SUFFIX = ".sha256.json"
VALIDATOR_SUFFIX = ".json"  # FILE.part.json


class DownloadError(OSError):
    """A release could not be fetched or verified (one line: what went wrong and what to do)."""


class TruncatedDownloadError(DownloadError):
    """The transfer stopped early; the .part file is kept for the next attempt to resume."""


class HashMismatchError(DownloadError):
    """A downloaded or cached file does not have the expected SHA-256."""


class DamagedRecordError(DownloadError):
    """FILE.sha256.json exists but cannot be read: the file it vouches for cannot be checked."""


@dataclass
class HashRecord:
    """What a cached file was verified against (FILE.sha256.json)."""

    sha256: str
    size: int
    source: str  # 'published' or 'first download' (no hash was published)
    url: str = ""
    mtime_ns: int = 0  # of the file when it was last hashed: a change means hash it again
    recorded: str = ""  # UTC time of the first download


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_ENVS)


def record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def load_record(path: Path) -> HashRecord | None:
    """The hash record of a cached file; None when there is none, DamagedRecordError naming it when it is damaged."""
    rec = record_path(path)
    if not rec.exists():
        return None
    try:
        d = json.loads(rec.read_bytes().decode("utf-8"))
        r = HashRecord(**{k: d[k] for k in HashRecord.__dataclass_fields__ if k in d})
        if not (isinstance(r.sha256, str) and re.fullmatch(r"[0-9a-f]{64}", r.sha256) and isinstance(r.size, int)):
            raise ValueError("no valid sha256 / size")
        return r
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise DamagedRecordError(f"the hash record {rec} is damaged ({type(e).__name__}: {one_line(e)}), so "
                                 f"{path.name} cannot be checked against the hash of its first download; restore "
                                 "the record, or trust the file as it is now with `ppflow download NAME --rerecord` "
                                 "(Python: fetch(NAME, rerecord=True))") from None


def read_record(path: Path) -> HashRecord | None:
    """The hash record of a cached file for display, or None (missing or damaged: see load_record)."""
    try:
        return load_record(path)
    except DamagedRecordError:
        return None


def _write_record(path: Path, rec: HashRecord) -> None:
    write_text_atomic(record_path(path), json.dumps(asdict(rec), indent=2), "hash record")


def _note(msg: str) -> None:
    print(f"ppflow: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- public
def fetch(release: Release | str, to: str | os.PathLike | None = None, *, force: bool = False,
          progress: bool = False, timeout: float = 60.0, rerecord: bool = False) -> Path:
    """Path of the verified file of `release` (a Release or a registry name), downloading it when needed.

    `to`: folder to keep it in (default PPFLOW_HOME/releases/NAME). `force`: download again even when a verified
    copy is cached (the new file must still match the published or recorded hash). `rerecord`: where no hash is
    published, replace the recorded hash (damaged or not) by the file's as it is now.
    """
    release = get_release(release) if isinstance(release, str) else release
    folder = Path(to).expanduser() if to is not None else release_dir(release)
    path = folder / release.filename
    if path.is_file() and not force:
        return verify_cached(release, path, rerecord)
    if offline():
        raise DownloadError(f"{release.name} is not in the cache ({path}) and downloads are off "
                            f"({'/'.join(OFFLINE_ENVS)} is set): unset it, or copy the file to {path} "
                            "(it is verified on load)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {folder} for {release.name} ({e.strerror or e}); set PPFLOW_HOME "
                            "or pass --to DIR to a writable folder") from None
    with _lock(path.with_name(path.name + ".lock")):
        if path.is_file() and not force:  # another process finished it while we waited
            return verify_cached(release, path, rerecord)
        if not (release.sha256 or rerecord):
            load_record(path)  # a damaged record fails before the transfer, not after it
        part = path.with_name(path.name + ".part")
        _transfer(release, part, timeout, progress)
        return _accept(release, part, path, rerecord)


def _trusted_record(release: Release, path: Path, rerecord: bool) -> HashRecord | None:
    """The record to check `path` against: none when re-recording, and a damaged one is an error only where it
    is the sole source of the expected hash (a published hash makes the record a cache, rewritten here)."""
    if rerecord and not release.sha256:
        if record_path(path).exists():
            _note(f"--rerecord: the hash recorded in {record_path(path).name} is replaced by this file's")
        return None
    try:
        return load_record(path)
    except DamagedRecordError as e:
        if not release.sha256:
            raise
        _note(f"{e.args[0].split(', so ')[0]}; it is written again from the published SHA-256")
        return None


def verify_cached(release: Release, path: Path, rerecord: bool = False) -> Path:
    """Check a cached file against the published or recorded hash; HashMismatchError when it differs."""
    rec = _trusted_record(release, path, rerecord)
    expected = release.sha256 or (rec.sha256 if rec else None)
    st = path.stat()
    if rec and rec.sha256 == expected and rec.size == st.st_size and rec.mtime_ns == st.st_mtime_ns:
        return path  # hashed before and unchanged since
    digest = sha256_file(path)
    if expected is not None and digest != expected:
        what = "the published SHA-256" if release.sha256 else "the SHA-256 recorded at its first download"
        raise HashMismatchError(
            f"{path} does not match {what} of {release.name} (got {digest[:16]}..., expected {expected[:16]}...): "
            f"it is damaged or was replaced; it is not loaded. Fetch it again with `ppflow download {release.name} "
            f"--force`" + ("" if release.sha256 else f" (or accept this file: delete {record_path(path).name}, or "
                          "pass --rerecord)"))
    source = "published" if release.sha256 else (rec.source if rec else "first download")
    recorded = rec.recorded if rec else _now()
    if expected is None:
        _note(f"no SHA-256 is published for {release.name}; recorded the hash of {path} ({digest[:16]}...) in "
              f"{record_path(path).name}: later loads must match it")
    _write_record(path, HashRecord(digest, st.st_size, source, release.url, st.st_mtime_ns, recorded))
    return path


# ---------------------------------------------------------------- internals
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def _lock(lock_path: Path):
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another process downloading the same file: wait for it
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _host(url: str) -> str:
    p = urllib.parse.urlsplit(url)
    return p.netloc or p.path if p.scheme != "file" else "file://" + p.path


def _open(release: Release, have: int, timeout: float, validator: str | None = None):
    from .. import __version__

    headers = {"User-Agent": f"ppflow/{__version__}"}
    if have:  # only with a validator: the server sends the whole (new) file when it changed
        headers["Range"], headers["If-Range"] = f"bytes={have}-", validator
    req = urllib.request.Request(release.url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # range not satisfiable: the .part already holds every byte
            return None
        raise DownloadError(f"cannot download {release.name}: {release.url} answered HTTP {e.code} {e.reason}; "
                            f"the release may have moved (see {release.homepage or 'its project page'})") from None
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
        raise DownloadError(f"cannot reach {_host(release.url)} for {release.name} ({reason}): this machine seems "
                            f"offline or the address is gone; retry when online, or copy {release.filename} into "
                            "the cache by hand (it is verified on load)") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, resets, bad URLs
        raise DownloadError(f"cannot download {release.name} from {_host(release.url)} "
                            f"({type(e).__name__}: {e}); retry, or copy the file into the cache by hand") from None


def _content_range_start(resp) -> int | None:
    m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", "") or "")
    return int(m.group(1)) if m else None


def validator_path(part: Path) -> Path:
    return part.with_name(part.name + VALIDATOR_SUFFIX)


def _validator(resp) -> str | None:
    """What proves a later range comes from the same file: a strong ETag, else Last-Modified (RFC 9110 If-Range)."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified") or None


def _saved_validator(release: Release, part: Path) -> str | None:
    try:
        d = json.loads(validator_path(part).read_text())
        return d["validator"] if d.get("url") == release.url and isinstance(d.get("validator"), str) else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _transfer(release: Release, part: Path, timeout: float, progress: bool) -> None:
    """Stream the release into `part`, resuming an earlier .part only when the server proves (If-Range) that its
    file is the one the .part came from; otherwise start over."""
    have = part.stat().st_size if part.is_file() else 0
    validator = _saved_validator(release, part) if have else None
    if have and validator is None:
        _note(f"{part} has no ETag / Last-Modified of its transfer to prove the file on {_host(release.url)} is "
              f"unchanged; downloading {release.name} from the start")
        have = 0
    resp = _open(release, have, timeout, validator)
    if resp is None:
        return
    with resp:
        resumed = bool(have) and getattr(resp, "status", None) == 206 and _content_range_start(resp) == have \
            and _validator(resp) in (None, validator)
        if have and not resumed:
            _note(f"{_host(release.url)} sent {release.name} from the start (the file changed since the cut, or the "
                  "host does not resume transfers); downloading it again")
            if getattr(resp, "status", None) == 206:  # a range of a changed file: ask for the whole file
                resp.close()
                remove_quietly(part)
                return _transfer(release, part, timeout, progress)
        if not resumed:
            v = _validator(resp)
            if v is None:
                remove_quietly(validator_path(part))
            else:
                write_text_atomic(validator_path(part), json.dumps({"url": release.url, "validator": v}),
                                  "transfer validator")
        length = resp.headers.get("Content-Length")
        total = int(length) + (have if resumed else 0) if length and length.isdigit() else release.size
        got = have if resumed else 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=got, unit="B", unit_scale=True, desc=release.filename)
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (http.client.HTTPException, OSError) as e:  # IncompleteRead, reset, timeout
                        raise TruncatedDownloadError(_truncated(release, part, got, total, type(e).__name__)) \
                            from None
                    if not chunk:
                        break
                    try:
                        f.write(chunk)
                    except OSError as e:  # a full disk above all
                        raise DownloadError(f"cannot write {part} ({e.strerror or e}): free space or pass --to DIR; "
                                            "the bytes kept so far resume next time") from None
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and got < total:
        raise TruncatedDownloadError(_truncated(release, part, got, total, "connection closed"))


def _truncated(release: Release, part: Path, got: int, total: int | None, why: str) -> str:
    of = f" of {total}" if total else ""
    return (f"the download of {release.name} stopped after {got}{of} bytes ({why}); {part} is kept: run "
            f"`ppflow download {release.name}` (or load it) again to resume")


def _accept(release: Release, part: Path, path: Path, rerecord: bool = False) -> Path:
    """Hash a finished transfer; rename it into place when it matches, delete it when it does not."""
    old = _trusted_record(release, path, rerecord)
    expected = release.sha256 or (old.sha256 if old else None)
    size = part.stat().st_size
    if release.size is not None and size != release.size:
        if size < release.size:
            raise TruncatedDownloadError(_truncated(release, part, size, release.size, "short file"))
        remove_quietly(part)
        remove_quietly(validator_path(part))
        raise HashMismatchError(f"the download of {release.name} has {size} bytes, more than the published "
                                f"{release.size}; it was deleted: the address no longer serves this release")
    remove_quietly(validator_path(part))  # the transfer is over: a .part from now on starts afresh
    digest = sha256_file(part)
    if expected is not None and digest != expected:
        remove_quietly(part)
        what = "published" if release.sha256 else "recorded at the first download"
        raise HashMismatchError(
            f"the download of {release.name} has SHA-256 {digest[:16]}..., not the {what} {expected[:16]}...: "
            f"the file is damaged or was replaced at {_host(release.url)}; it was deleted and nothing was loaded"
            + ("" if release.sha256 else f" (delete {record_path(path)} to accept a new file)"))
    os.replace(part, path)
    st = path.stat()
    source = "published" if release.sha256 else (old.source if old else "first download")
    _write_record(path, HashRecord(digest, st.st_size, source, release.url, st.st_mtime_ns,
                                   old.recorded if old else _now()))
    if expected is None:
        _note(f"no SHA-256 is published for {release.name}; recorded this download's ({digest}) in "
              f"{record_path(path)}: later downloads and loads must match it")
    return path
