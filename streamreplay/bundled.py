"""The tapes that ship inside the package (`streamreplay/tapes/`), found with importlib.resources from any
install: a checkout, an editable install, a wheel, pipx. `recordings/` is where a user's own recordings go."""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path


def bundled_dir() -> Path:
    """The folder of the bundled cassettes. Wheels install as plain files, so it is a real folder."""
    return Path(str(files("streamreplay").joinpath("tapes")))


def bundled_tapes() -> list[Path]:
    """Every bundled cassette, by name."""
    return sorted(bundled_dir().glob("*.jsonl"))


def bundled_tape(name: str) -> Path:
    """One bundled cassette by its tape name; a FileNotFoundError that lists the names otherwise."""
    path = bundled_dir() / f"{name}.jsonl"
    if not path.is_file():
        names = ", ".join(p.stem for p in bundled_tapes())
        raise FileNotFoundError(f"no bundled tape {name!r}; bundled: {names}")
    return path


def copy_bundled(destination: str | Path) -> list[Path]:
    """Copy every bundled cassette into `destination` (made if missing), leaving files already there as they
    are; the paths written."""
    folder = Path(destination)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for tape in bundled_tapes():
        target = folder / tape.name
        if not target.exists():
            shutil.copyfile(tape, target)
            written.append(target)
    return written
