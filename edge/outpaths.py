"""Where ``--output`` writes: never over an input, never two results into one file, a folder we can write.

    check_not_an_input([Path("out.jpg")], [Path("cat.jpg")])    # OutputError if out.jpg *is* cat.jpg
    names = unique_names(["a/b__c.jpg", "a__b/c.jpg"])           # flat names, made unique with a stable suffix
    folder = prepare_folder(Path("labelled"))                    # created; OutputError if it cannot be written

An output that is an input (the same path, or another name of the same file: a link, ``./``) would
replace the photo or the video being read, so it is a usage error, found before any work is done.
"""


import hashlib
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .errors import EdgeError

IMAGE_OUTPUT_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class OutputError(EdgeError, ValueError):
    """An ``--output`` that cannot be used; the message is one line."""


def _file_id(path: Path) -> Optional[Tuple[int, int]]:
    """The device and inode of an existing file (the same for every name of it), or None."""
    try:
        info = os.stat(str(path))
    except OSError:
        return None
    return info.st_dev, info.st_ino


def check_not_an_input(outputs: Iterable[Path], inputs: Iterable[Optional[Path]]) -> None:
    """OutputError if writing one of ``outputs`` would replace one of ``inputs`` (same file, by inode)."""
    taken: Set[Tuple[int, int]] = {i for i in map(_file_id, (p for p in inputs if p is not None)) if i}
    for output in outputs:
        if _file_id(output) in taken:  # an output that does not exist yet is no input
            raise OutputError(f"--output {output} is one of the inputs; it would be overwritten: choose another name")


def check_image_suffix(path: Path) -> None:
    """An image output must have a suffix OpenCV encodes, or no suffix (a folder)."""
    suffix = path.suffix.lower()
    if suffix and suffix not in IMAGE_OUTPUT_SUFFIXES and not path.is_dir():
        raise OutputError(f"--output {path}: unknown image suffix {path.suffix!r}; use one of "
                          f"{', '.join(IMAGE_OUTPUT_SUFFIXES)} (or a folder)")


def prepare_folder(folder: Path) -> Path:
    """Create ``folder`` if need be and make sure files can be written in it (OutputError otherwise)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"--output {folder}: a file is in the way of this folder") from None
    except OSError as exc:
        raise OutputError(f"--output {folder}: cannot create this folder ({exc.strerror or exc})") from None
    if not os.access(str(folder), os.W_OK | os.X_OK):
        raise OutputError(f"--output {folder}: this folder is not writable")
    return folder


def flat_name(source: str) -> str:
    """One output file name for an input shown as ``source`` (folders flattened with ``__``)."""
    name = source.strip("/").replace("/", "__")
    return name if Path(name).suffix.lower() in IMAGE_OUTPUT_SUFFIXES else name + ".jpg"


def unique_names(sources: Sequence[str]) -> List[str]:
    """``flat_name`` of each source; names that collide get ``-`` and 8 hex digits of the source's hash.

    The suffix depends only on the source, so a rerun writes the same names (stable), and two inputs
    never share an output.
    """
    names = [flat_name(s) for s in sources]
    counts: Dict[str, int] = {}
    for name in names:
        key = name.lower()  # case-insensitive file systems (an SD card's FAT) collide these too
        counts[key] = counts.get(key, 0) + 1
    out: List[str] = []
    for source, name in zip(sources, names):
        if counts[name.lower()] > 1:
            stem, suffix = os.path.splitext(name)
            name = f"{stem}-{hashlib.sha1(source.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}{suffix}"
        out.append(name)
    return out
