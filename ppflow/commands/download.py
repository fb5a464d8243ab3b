"""`ppflow download`: fetch a known release (DiT, SiT, official PPFlow) once into the cache and verify it."""

from __future__ import annotations

from ..errors import CommandError
from ..hub.download import fetch, read_record
from ..hub.registry import RELEASES, get_release, known_names, ppflow_home


def add_arguments(p) -> None:
    p.description = ("Download a known release into PPFLOW_HOME (default ~/.cache/ppflow) or --to DIR and check its "
                     "SHA-256; an interrupted transfer resumes on the next call. Where no hash is published the "
                     "first download's is recorded and later ones must match. ppflow.load_model(NAME) does the same.")
    p.add_argument("name", nargs="?", help=f"release name: {', '.join(known_names())}")
    p.add_argument("--to", default=None, help="folder to keep the file in (default: PPFLOW_HOME/releases/NAME)")
    p.add_argument("--force", action="store_true", help="download again even when a verified copy is cached")
    p.add_argument("--rerecord", action="store_true",
                   help="where no SHA-256 is published: trust the file as it is now and record its hash again "
                        "(after a damaged or outdated FILE.sha256.json)")
    p.add_argument("--list", action="store_true", help="list the known releases and what is cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _list() -> int:
    from ..hub.registry import release_dir

    print(f"cache: {ppflow_home()}")
    for name in known_names():
        r = RELEASES[name]
        path = release_dir(r) / r.filename
        rec = read_record(path) if path.is_file() else None
        state = f"cached ({rec.source} SHA-256 {rec.sha256[:12]}...)" if rec else "not cached"
        print(f"  {name:<14} {r.format:<16} {state}; {r.hash_note}; {r.note}")
    return 0


def main(args) -> int:
    if args.list:
        return _list()
    if not args.name:
        raise CommandError(f"give a release name ({', '.join(known_names())}) or --list")
    try:
        release = get_release(args.name)
    except KeyError as e:
        raise CommandError(e.args[0]) from None
    path = fetch(release, args.to, force=args.force, progress=not args.no_progress,
                 rerecord=args.rerecord)  # DownloadError: an OSError
    rec = read_record(path)
    how = "the published SHA-256" if release.sha256 else "the SHA-256 recorded at its first download"
    print(path)
    print(f"verified: {how} ({rec.sha256 if rec else '?'}); load it with ppflow.load_model({release.name!r})")
    return 0
