"""Releases by name: fetched once, verified, resumed after a cut, and never loaded when the bytes are wrong.

Every transfer here is real: urllib against file:// URLs and an HTTP server on loopback (tests/hub/conftest.py).
"""

from __future__ import annotations

import json

import pytest
import torch

import ppflow
from ppflow import cli
from ppflow.hub import RELEASES, DownloadError, HashMismatchError, TruncatedDownloadError, fetch
from ppflow.hub.download import read_record, record_path
from tests.hub.conftest import release, sha


def test_file_url_first_download_records_its_hash(tmp_path, home, sit_bytes, capsys):
    src = tmp_path / "SiT-test.pt"
    src.write_bytes(sit_bytes)
    r = release(src.as_uri())  # no SHA-256 published
    path = fetch(r)
    assert path == home / "releases" / "SiT-test" / "SiT-test.pt" and path.read_bytes() == sit_bytes
    rec = read_record(path)
    assert (rec.sha256, rec.size, rec.source) == (sha(sit_bytes), len(sit_bytes), "first download")
    assert "no SHA-256 is published for SiT-test" in capsys.readouterr().err  # said out loud
    src.unlink()  # fetched once: the cache serves the next call without the source
    assert fetch(r) == path


def test_published_hash_is_checked_and_a_wrong_one_refused(server, home, sit_bytes):
    server.state.files["/SiT-test.pt"] = sit_bytes
    good = release(server.url + "/SiT-test.pt", sha(sit_bytes))
    assert fetch(good).read_bytes() == sit_bytes
    assert read_record(fetch(good)).source == "published"

    bad = release(server.url + "/SiT-test.pt", "0" * 64, name="SiT-bad")
    with pytest.raises(HashMismatchError, match="damaged or was replaced.*deleted and nothing was loaded"):
        fetch(bad)
    left = {p.name for p in (home / "releases" / "SiT-bad").iterdir()}
    assert left == {"SiT-test.pt.lock"}  # neither the file nor a .part is left (the lock file stays, empty)


def test_a_cut_transfer_keeps_its_part_and_resumes_with_range(server, home, sit_bytes):
    server.state.files["/f.pt"] = sit_bytes
    server.state.cut_after = 1000
    r = release(server.url + "/f.pt", sha(sit_bytes))
    with pytest.raises(TruncatedDownloadError, match=f"stopped after 1000 of {len(sit_bytes)} bytes.*resume"):
        fetch(r)
    folder = home / "releases" / "SiT-test"
    assert not (folder / "SiT-test.pt").exists()  # nothing loadable exists
    assert (folder / "SiT-test.pt.part").stat().st_size == 1000
    assert fetch(r).read_bytes() == sit_bytes
    assert server.state.requests[-1] == ("/f.pt", "bytes=1000-")  # the second call asked only for the rest
    assert not (folder / "SiT-test.pt.part").exists()


def test_a_host_without_range_restarts_and_a_complete_part_is_accepted(server, home, sit_bytes):
    server.state.files["/f.pt"] = sit_bytes
    server.state.ranges, server.state.cut_after = False, 500
    r = release(server.url + "/f.pt", sha(sit_bytes))
    with pytest.raises(TruncatedDownloadError):
        fetch(r)
    assert fetch(r).read_bytes() == sit_bytes  # 200 instead of 206: started over, not appended

    other = release(server.url + "/f.pt", sha(sit_bytes), name="SiT-done")  # killed after the last byte
    part = home / "releases" / "SiT-done" / "SiT-test.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(sit_bytes)
    server.state.ranges = True
    assert fetch(other).read_bytes() == sit_bytes  # a .part with no validator is fetched again; the hash decides


def test_unreachable_and_offline(closed_port, home, sit_bytes, monkeypatch, tmp_path):
    r = release(f"http://127.0.0.1:{closed_port}/SiT-test.pt")
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1.*offline") as e:
        fetch(r)
    assert "\n" not in str(e.value)
    missing = release((tmp_path / "nowhere.pt").as_uri(), name="SiT-missing")
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch(missing)

    src = tmp_path / "SiT-test.pt"
    src.write_bytes(sit_bytes)
    cached = release(src.as_uri(), name="SiT-cached")
    fetch(cached)
    monkeypatch.setenv("PPFLOW_OFFLINE", "1")
    assert fetch(cached).is_file()  # the cache still serves
    with pytest.raises(DownloadError, match="not in the cache .* downloads are off"):
        fetch(release(src.as_uri(), name="SiT-new"))


def test_tampered_cache_and_changed_source_never_load(tmp_path, home, sit_bytes, monkeypatch):
    src = tmp_path / "SiT-test.pt"
    src.write_bytes(sit_bytes)
    r = release(src.as_uri())
    monkeypatch.setitem(RELEASES, r.name, r)
    path = fetch(r)
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))  # size unchanged, mtime changed: it is hashed again
    with pytest.raises(HashMismatchError, match="recorded at its first download.*not loaded"):
        ppflow.load_model("SiT-test")

    src.write_bytes(bytes(data))  # the host now serves other bytes than the first download
    with pytest.raises(HashMismatchError, match="recorded at the first download"):
        fetch(r, force=True)
    assert read_record(path).sha256 == sha(sit_bytes)  # the record is kept


def test_load_model_by_name_equals_the_local_file(tmp_path, home, sit_bytes, monkeypatch):
    src = tmp_path / "SiT-test.pt"
    src.write_bytes(sit_bytes)
    r = release(src.as_uri(), overrides={"vae": "stabilityai/sd-vae-ft-ema"})
    monkeypatch.setitem(RELEASES, r.name, r)
    named = ppflow.load_model("sit-TEST")  # names are case-insensitive
    local = ppflow.load_model(str(src), format="sit")
    assert named.config.vae == "stabilityai/sd-vae-ft-ema"  # what the release says the file cannot
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 2])
    assert torch.equal(named(x, t, y), local(x, t, y))
    with pytest.raises(FileNotFoundError):
        ppflow.load_model("no-such-release")


def test_registry_lists_the_known_releases():
    assert {"DiT-XL-2-256", "DiT-XL-2-512", "SiT-XL-2-256", "PPF-XL-2", "PPF-XL-3"} <= set(RELEASES)
    assert RELEASES["PPF-XL-3"].format == "ppflow-official"
    assert all(r.sha256 is None for r in RELEASES.values())  # none is published: said, not invented


def test_cli_download(tmp_path, home, sit_bytes, monkeypatch, capsys):
    src = tmp_path / "SiT-test.pt"
    src.write_bytes(sit_bytes)
    monkeypatch.setitem(RELEASES, "SiT-test", release(src.as_uri()))
    assert cli.main(["download", "SiT-test", "--to", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "out" / "SiT-test.pt") in out and sha(sit_bytes) in out
    assert json.loads(record_path(tmp_path / "out" / "SiT-test.pt").read_text())["source"] == "first download"
    assert cli.main(["download", "--list"]) == 0 and "PPF-XL-2" in capsys.readouterr().out
    assert cli.main(["download", "PPF-QQ"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppflow download: error: 'PPF-QQ' is not a known release") and err.count("\n") == 1
    monkeypatch.setenv("PPFLOW_OFFLINE", "1")
    assert cli.main(["download", "PPF-XL-2", "--no-progress"]) == 2
    assert "downloads are off" in capsys.readouterr().err


def test_commands_take_release_names(tmp_path, home, sit_bytes, monkeypatch, capsys):
    src = tmp_path / "SiT-test.pt"
    src.write_bytes(sit_bytes)
    monkeypatch.setitem(RELEASES, "SiT-test", release(src.as_uri(), overrides={"vae": "stabilityai/sd-vae-ft-ema"}))
    assert cli.main(["info", "SiT-test"]) == 0  # resolve_path fetches (here: file://) and verifies
    out = capsys.readouterr().out
    assert "format      sit" in out and "vae stabilityai/sd-vae-ft-ema" in out  # the registry entry's VAE
    assert cli.main(["push", "SiT-test", "org/sit", "--dry-run", str(tmp_path / "dry")]) == 0  # converted on the way
    assert ppflow.load_model(str(tmp_path / "dry")).config.vae == "stabilityai/sd-vae-ft-ema"


# ---------------------------------------------------------------- issue 27: never spliced, damaged records named
def test_a_file_changed_on_the_server_after_a_cut_is_downloaded_again_never_spliced(server, home, sit_bytes, capsys):
    v1, v2 = sit_bytes, bytes(b ^ 0xFF for b in sit_bytes)  # same size, other bytes: a new upload under one name
    server.state.files["/f.pt"], server.state.cut_after = v1, 1000
    r = release(server.url + "/f.pt")  # no published hash: the download's own is recorded, so a splice would stick
    with pytest.raises(TruncatedDownloadError):
        fetch(r)
    server.state.files["/f.pt"] = v2
    path = fetch(r)
    assert path.read_bytes() == v2 and read_record(path).sha256 == sha(v2)
    assert server.state.requests[-1] == ("/f.pt", "bytes=1000-")  # it asked to resume; If-Range got the whole file
    assert "downloading it again" in capsys.readouterr().err
    assert sorted(p.name for p in path.parent.iterdir()) == ["SiT-test.pt", "SiT-test.pt.lock", "SiT-test.pt.sha256.json"]

    server.state.etags = False  # a host that proves nothing: a cut transfer starts over
    server.state.files["/g.pt"], server.state.cut_after = v1, 1000
    g = release(server.url + "/g.pt", name="SiT-g")
    with pytest.raises(TruncatedDownloadError):
        fetch(g)
    server.state.files["/g.pt"] = v2
    assert fetch(g).read_bytes() == v2
    assert server.state.requests[-1] == ("/g.pt", None)  # no Range without a validator
    assert "no ETag / Last-Modified" in capsys.readouterr().err


def test_a_damaged_hash_record_is_an_error_naming_it(tmp_path, home, sit_bytes, monkeypatch, capsys):
    from ppflow.hub.download import DamagedRecordError

    src = tmp_path / "SiT-test.pt"
    src.write_bytes(sit_bytes)
    r = release(src.as_uri())
    monkeypatch.setitem(RELEASES, r.name, r)
    path = fetch(r)
    other = bytes(b ^ 1 for b in sit_bytes)
    path.write_bytes(other)  # the file is replaced ...
    record_path(path).write_text('{"sha256": "0123')  # ... and its record damaged
    for call in (lambda: fetch(r), lambda: ppflow.load_model("SiT-test"), lambda: fetch(r, force=True)):
        with pytest.raises(DamagedRecordError, match=f"hash record {record_path(path)} is damaged.*--rerecord"):
            call()
    assert path.read_bytes() == other and record_path(path).read_text() == '{"sha256": "0123'  # nothing changed
    assert fetch(r, rerecord=True) == path  # explicitly: trust the file as it is now
    assert read_record(path).sha256 == sha(other) and "replaced by this file's" in capsys.readouterr().err

    published = release(src.as_uri(), sha(sit_bytes), name="SiT-pub")  # the record is only a cache here
    p = fetch(published)
    record_path(p).write_text("garbage")
    assert fetch(published) == p and read_record(p).sha256 == sha(sit_bytes)
    assert "written again from the published SHA-256" in capsys.readouterr().err


def test_cli_download_rerecord_trusts_the_file_only_when_asked(tmp_path, home, sit_bytes, monkeypatch, capsys):
    src = tmp_path / "SiT-test.pt"
    src.write_bytes(sit_bytes)
    monkeypatch.setitem(RELEASES, "SiT-test", release(src.as_uri()))
    path = fetch(RELEASES["SiT-test"])
    other = bytes(b ^ 1 for b in sit_bytes)
    path.write_bytes(other)
    record_path(path).write_text('{"sha256": "0123')  # a damaged record next to a replaced file
    capsys.readouterr()
    assert cli.main(["download", "SiT-test", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"hash record {record_path(path)} is damaged" in err and "--rerecord" in err
    assert cli.main(["download", "SiT-test", "--no-progress", "--rerecord"]) == 0  # the advice works as written
    assert read_record(path).sha256 == sha(other) and path.read_bytes() == other
