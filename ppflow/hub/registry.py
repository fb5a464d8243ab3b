"""Known releases by name: where each published checkpoint lives and what ppflow knows about the file.

None of the projects below publishes a SHA-256 or a byte size for its files, so `sha256` and `size` are None
("not published"): the first download's hash is recorded in the cache and every later load is checked against it
(see ppflow.hub.download). Add a release with `register(Release(...))`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

HOME_ENV = "PPFLOW_HOME"
SD_VAE = "stabilityai/sd-vae-ft-ema"  # the VAE DiT, SiT and PPFlow sample with (ft-mse gives near-identical FID)


@dataclass(frozen=True)
class Release:
    """One published checkpoint file."""

    name: str  # what users type: load_model("SiT-XL-2-256"), ppflow download SiT-XL-2-256
    url: str  # direct download address (http, https or file)
    filename: str  # name of the file in the cache (the project's own file name)
    format: str  # ppflow.convert format: 'dit', 'sit', 'ppflow-official', 'ppflow', 'ppflow-train'
    sha256: str | None = None  # hex digest published by the authors; None = not published
    size: int | None = None  # bytes, when published; None = not published
    overrides: dict = field(default_factory=dict)  # config fields the file cannot tell (e.g. the VAE)
    homepage: str = ""  # where the link is published
    note: str = ""  # one line shown by `ppflow download --list`

    @property
    def hash_note(self) -> str:
        return f"SHA-256 {self.sha256}" if self.sha256 else "no SHA-256 published (the first download's is recorded)"


RELEASES: dict[str, Release] = {}


def register(release: Release) -> Release:
    """Add (or replace) a release under its name."""
    RELEASES[release.name] = release
    return release


def known_names() -> list[str]:
    return sorted(RELEASES)


def get_release(name: str) -> Release:
    """The release called `name` (case-insensitive); KeyError naming the known ones otherwise."""
    if name in RELEASES:
        return RELEASES[name]
    folded = {k.lower(): v for k, v in RELEASES.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise KeyError(f"{name!r} is not a known release; known: {', '.join(known_names())} "
                   "(or give a local path, or a Hugging Face Hub id 'org/repo')")


def is_release_name(name: object) -> bool:
    return isinstance(name, str) and (name in RELEASES or name.lower() in {k.lower() for k in RELEASES})


def ppflow_home() -> Path:
    """$PPFLOW_HOME, else $XDG_CACHE_HOME/ppflow, else ~/.cache/ppflow (nothing is created here)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ppflow"


def release_dir(release: Release) -> Path:
    """Cache folder of one release: PPFLOW_HOME/releases/NAME."""
    return ppflow_home() / "releases" / release.name


_DIT = "https://github.com/facebookresearch/DiT"
_SIT = "https://github.com/willisma/SiT"
_PPF = "https://github.com/fudan-generative-vision/PPFlow"

for _r in (
    Release("DiT-XL-2-256", "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt", "DiT-XL-2-256x256.pt",
            "dit", overrides={"vae": SD_VAE}, homepage=_DIT,
            note="DiT-XL/2 ImageNet 256 (EMA state dict; epsilon prediction, a fine-tuning start for flow)"),
    Release("DiT-XL-2-512", "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt", "DiT-XL-2-512x512.pt",
            "dit", overrides={"vae": SD_VAE}, homepage=_DIT, note="DiT-XL/2 ImageNet 512 (EMA state dict)"),
    Release("SiT-XL-2-256",
            "https://www.dl.dropboxusercontent.com/scl/fi/as9oeomcbub47de5g4be0/SiT-XL-2-256.pt"
            "?rlkey=uxzxmpicu46coq3msb17b9ofa&dl=0", "SiT-XL-2-256.pt", "sit", overrides={"vae": SD_VAE},
            homepage=_SIT, note="SiT-XL/2 ImageNet 256 (the baseline PPF-XL models are adapted from)"),
    Release("PPF-XL-2",
            "https://www.dropbox.com/scl/fi/uh4o7kra6fnwlrd2lmry0/PPF-XL-2.pt"
            "?rlkey=k26p7aw7zwar1a8x0em74vhor&st=upovbj1j&dl=1", "PPF-XL-2.pt", "ppflow-official",
            overrides={"vae": SD_VAE}, homepage=_PPF,
            note="official PPF-XL-2 ImageNet 256 (README: FID-50K 1.99, IS 271.62)"),
    Release("PPF-XL-3",
            "https://www.dropbox.com/scl/fi/0tnt99s21532sxfg804vq/PPF-XL-3.pt"
            "?rlkey=gt7shf2i23jb40pxzv9t0nje3&st=hlbtmvhi&dl=1", "PPF-XL-3.pt", "ppflow-official",
            overrides={"vae": SD_VAE}, homepage=_PPF,
            note="official PPF-XL-3 ImageNet 256 (README: FID-50K 2.23, IS 286.67)"),
):
    register(_r)


def release_overrides(name: str | os.PathLike) -> dict:
    """Config fields a release's registry entry sets (e.g. its VAE); {} for anything but a release name."""
    name = str(name)
    return dict(get_release(name).overrides) if not Path(name).exists() and is_release_name(name) else {}
