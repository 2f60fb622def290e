"""Model files that ship split across packages, joined once into a cache folder and verified.

PyPI limits a file's size, so some models arrive in parts. Each part is checked against the hash
its package's RECORD lists while it is copied; the joined file's SHA-256 is recorded beside it, and
every later load checks the file against that record (a tenth of a second for 145 MB). A file
that does not match, or whose parts changed since, is built again. Where the project pins the
whole file's SHA-256 (packages that state no licence or provenance of their own), a joined file
with any other hash is refused, never used. Nothing is downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("koe.local")

BLOCK = 1 << 20


def cache_dir() -> Path:
    """Koe's cache folder: $KOE_CACHE_DIR, else ~/.cache/koe."""
    return Path(os.environ.get("KOE_CACHE_DIR") or Path.home() / ".cache" / "koe")


@dataclass(frozen=True)
class PackageFile:
    path: Path
    sha256: str  # hex, as the package's RECORD lists it


def package_file(distribution: str, relative: str) -> PackageFile:
    """A file of an installed distribution and the SHA-256 its RECORD promises."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"package {distribution!r} is not installed: pip install {distribution}") from None
    for entry in dist.files or ():
        if str(entry) == relative and entry.hash is not None and entry.hash.mode == "sha256":
            digest = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
            return PackageFile(Path(dist.locate_file(entry)), digest)
    raise FileNotFoundError(f"{relative} is not listed with a SHA-256 in {distribution}'s RECORD; reinstall it")


def joined(target: Path, parts: list[PackageFile], sha256: str | None = None) -> Path:
    """`target`, the concatenation of `parts`: reused when it matches its record, else built anew.

    `sha256` (hex), when given, is the hash the whole file must have. Raises RuntimeError when a part
    differs from its package's RECORD or the joined file from `sha256` (nothing is left in the cache).
    """
    manifest = target.with_name(target.name + ".manifest.json")
    wanted = [part.sha256 for part in parts]
    try:
        record = json.loads(manifest.read_text())
        if record["parts"] == wanted and record["sha256"] == (sha256 or record["sha256"]) \
                and _sha256(target) == record["sha256"]:
            return target
        log.warning("%s does not match its record: building it again", target)
    except (OSError, ValueError, KeyError):
        pass  # not built yet (or the record is unreadable): build it
    return _build(target, parts, manifest, sha256)


def _build(target: Path, parts: list[PackageFile], manifest: Path, sha256: str | None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    whole = hashlib.sha256()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # concurrent builders never share one
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                own = hashlib.sha256()
                with open(part.path, "rb") as src:
                    while block := src.read(BLOCK):
                        own.update(block)
                        whole.update(block)
                        out.write(block)
                if own.hexdigest() != part.sha256:
                    raise RuntimeError(f"{part.path} is damaged (its SHA-256 differs from its package's RECORD); "
                                       "reinstall that package")
        if sha256 is not None and whole.hexdigest() != sha256:
            raise RuntimeError(f"{target.name} joined from {len(parts)} parts has SHA-256 {whole.hexdigest()}, "
                               f"not the {sha256} Koe pins: the packages are not the expected release; "
                               "reinstall the pinned versions")
        manifest.unlink(missing_ok=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    manifest.write_text(json.dumps({"sha256": whole.hexdigest(), "size": target.stat().st_size,
                                    "parts": [part.sha256 for part in parts]}))
    log.info("built %s from %d part(s)", target, len(parts))
    return target


def verified(path: Path, sha256: str) -> Path:
    """`path`, once its SHA-256 (hex) is the pinned one.

    Raises FileNotFoundError when it is missing and RuntimeError when its content differs: a model
    file that is not the one Koe was tested with is never loaded.
    """
    if not path.is_file():
        raise FileNotFoundError(f"model file missing: {path}")
    actual = _sha256(path)
    if actual != sha256:
        raise RuntimeError(f"{path} is not the expected model file (SHA-256 {actual}, expected {sha256}); "
                           "reinstall the package pinned in requirements-nodeps.txt")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
