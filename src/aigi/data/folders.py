"""Find labelled images in the layouts the field uses.

- Label folders anywhere in a tree: ``0_real``/``1_fake``, ``real``/``fake``, ``nature``/``ai`` (any case);
  every image below one inherits its label (the deepest label folder on a path wins).
- A benchmark root holding subsets: each folder that holds label folders is one subset
  (``forensynths_thumbs/biggan/{0_real,1_fake}`` -> subset ``biggan``).
- A pooled real folder scored against one folder per generator: ``test/0_real`` (flat) beside
  ``test/1_fake/<generator>/`` gives one subset per generator, each with all the pooled reals.
- A CSV manifest with columns ``path``, ``label`` and optionally ``subset`` (paths relative to the CSV); with
  ``confine``, only files inside the manifest's folder (see :func:`read_manifest`).

Files without an image extension, files that are not regular files (FIFO, socket, device: never opened, so a walk
cannot block) and folders that cannot be read are listed in ``skipped`` with the reason, never dropped silently.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from aigi.data.decode import is_image_path, special_file_kind
from aigi.errors import DataError  # noqa: F401  (re-exported)

REAL_NAMES = {"0_real", "real", "nature", "reals"}
FAKE_NAMES = {"1_fake", "fake", "ai", "fakes", "generated"}
LABEL_WORDS = {
    **{n: 0 for n in REAL_NAMES},
    **{n: 1 for n in FAKE_NAMES},
    "0": 0,
    "1": 1,
    "false": 0,
    "true": 1,
}


@dataclass
class Sample:
    path: Path
    label: int | None  # 0 real, 1 generated, None unknown


@dataclass
class ImageSet:
    """Samples plus named subsets (lists of sample indices; pooled reals are shared, not copied)."""

    samples: list[Sample]
    subsets: dict[str, list[int]]
    root: Path | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def labels(self) -> list[int | None]:
        return [s.label for s in self.samples]

    def describe(self) -> str:
        parts = []
        for name, idx in self.subsets.items():
            n_real = sum(self.samples[i].label == 0 for i in idx)
            parts.append(f"{name}: {n_real} real + {len(idx) - n_real} generated")
        return "; ".join(parts)


def not_a_file_reason(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image file without opening it (a FIFO would block), or None if it is a
    regular file. A missing file is left to the reader, which reports it per file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot read file ({e.strerror or e})"
    kind = special_file_kind(mode)
    return None if kind is None else f"not a regular file ({kind})"


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    files, skipped = [], []
    seen: set[tuple[int, int]] = set()  # (device, inode) of folders walked: symlink cycles are walked once

    def unreadable_folder(e: OSError) -> None:
        skipped.append((Path(e.filename), f"cannot read folder ({e.strerror or e})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable_folder, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as e:  # gone, or replaced, since it was listed
            unreadable_folder(e)
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            skipped.append((Path(dirpath), "folder already walked (symbolic link cycle or duplicate link)"))
            continue
        seen.add((st.st_dev, st.st_ino))
        folder = Path(dirpath)
        skipped += [
            (folder / d, "hidden folder (name starts with '.'): not searched") for d in sorted(dirnames) if d[0] == "."
        ]
        dirnames[:] = sorted(d for d in dirnames if d[0] != ".")
        _take_files(folder, sorted(filenames), files, skipped)
    return files, skipped


def _take_files(folder: Path, names: list[str], files: list[Path], skipped: list[tuple[Path, str]]) -> None:
    """Sort the files of one folder into image files and skipped entries (hidden, other extensions, not regular)."""
    for name in names:
        p = folder / name
        if name.startswith("."):
            reason = "hidden file (name starts with '.')"
        else:
            reason = not_a_file_reason(p) if is_image_path(p) else "not an image file extension"
        if reason is None:
            files.append(p)
        else:
            skipped.append((p, reason))


def collect_files(inputs: list[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files and folders given on a command line -> image files (folders walked) and skipped entries."""
    files, skipped = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            f, s = _walk(p)
            files += f
            skipped += s
        elif (reason := not_a_file_reason(p)) is not None:
            skipped.append((p, reason))
        else:
            files.append(p)  # named explicitly: try it whatever its extension; errors are reported per file
    return files, skipped


def _label_of(parts: tuple[str, ...]) -> tuple[int | None, int]:
    """(label, index of the deepest label folder in ``parts``) or (None, -1)."""
    for i in range(len(parts) - 1, -1, -1):
        lab = parts[i].lower()
        if lab in REAL_NAMES:
            return 0, i
        if lab in FAKE_NAMES:
            return 1, i
    return None, -1


def discover(root: str | os.PathLike, confine: bool = False) -> ImageSet:
    """Labelled images under ``root`` (a folder or a CSV manifest), grouped into subsets. ``confine``: a manifest
    may list only files inside its own folder (see :func:`read_manifest`)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return read_manifest(root, confine=confine)
        raise DataError(f"{root}: expected a folder of images or a CSV manifest")
    files, skipped = _walk(root)
    samples: list[Sample] = []
    # parent folder of the label folder -> label -> sub-group (first folder below the label folder, "" if flat)
    groups: dict[tuple[str, ...], dict[int, dict[str, list[int]]]] = defaultdict(
        lambda: {0: defaultdict(list), 1: defaultdict(list)}
    )
    unlabelled = 0
    for f in files:
        # the root's own name counts: `discover("test/0_real")` is a folder of real images
        parts = (root.resolve().name,) + f.relative_to(root).parts[:-1]
        label, i = _label_of(parts)
        if label is None:
            unlabelled += 1
            skipped.append((f, "no label folder (0_real/1_fake, real/fake, nature/ai) above it"))
            continue
        sub = parts[i + 1] if len(parts) > i + 1 else ""
        groups[parts[:i]][label][sub].append(len(samples))
        samples.append(Sample(f, label))
    if not samples:
        unreadable_root = next((reason for p, reason in skipped if p == root), None)
        if unreadable_root is not None:
            raise DataError(f"{root}: {unreadable_root}")
        raise DataError(
            f"{root}: found no labelled images (looked for folders named 0_real/1_fake, real/fake or nature/ai"
            f"; {len(files)} image files, {unlabelled} outside label folders)"
        )
    subsets: dict[str, list[int]] = {}
    for parent, by_label in sorted(groups.items()):
        parent = parent[1:]  # drop the root's own name again
        base = "/".join(parent) or root.resolve().name
        reals, fakes = by_label[0], by_label[1]
        real_flat = set(reals) <= {""}
        fake_subs = set(fakes) - {""}
        if fake_subs and real_flat:  # pooled reals against one folder per generator
            pooled = reals.get("", [])
            for g in sorted(fakes):
                name = base if g == "" else (g if not parent else f"{base}/{g}")
                _add_subset(subsets, name, parent, g, pooled + fakes[g])
        elif fake_subs or set(reals) - {""}:  # paired sub-folders below both label folders
            for g in sorted(set(reals) | set(fakes)):
                name = base if g == "" else (g if not parent else f"{base}/{g}")
                _add_subset(subsets, name, parent, g, reals.get(g, []) + fakes.get(g, []))
        else:
            _add_subset(subsets, base, parent, "", reals.get("", []) + fakes.get("", []))
    return ImageSet(samples=samples, subsets=subsets, root=root, skipped=skipped)


def _add_subset(subsets: dict[str, list[int]], name: str, parent: tuple[str, ...], group: str, idx: list[int]) -> None:
    """Add a subset; a name another part of the tree already took gets its full path, then a number."""
    if name in subsets:
        name = "/".join(parent + ((group,) if group else ())) or name
    base, k = name, 2
    while name in subsets:
        name, k = f"{base} #{k}", k + 1
    subsets[name] = idx


def parse_label(value: str, where: str) -> int:
    v = value.strip().lower()
    if v not in LABEL_WORDS:
        raise DataError(f"{where}: label {value!r} is not one of 0/1, real/fake, nature/ai")
    return LABEL_WORDS[v]


def read_manifest(csv_path: str | os.PathLike, subset_column: str = "subset", confine: bool = False) -> ImageSet:
    """A CSV with columns ``path``, ``label`` and optionally ``subset`` (names matched ignoring case and spaces;
    a UTF-8 byte-order mark, as spreadsheet programs write, is fine).

    A manifest names files anywhere, which is right for one you wrote. With ``confine`` (for manifests from others,
    as an upload to a server), a row whose path leads outside the manifest's folder, once ``..`` and symbolic links
    are resolved, is not read: it becomes a ``skipped`` entry with the same reason whether that file exists or not,
    so the reasons tell nothing about files outside."""
    csv_path = Path(csv_path)
    inside = Path(os.path.realpath(csv_path.parent)) if confine else None
    samples, subsets, skipped = [], defaultdict(list), []
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            col = {name: header.index(name) for name in ("path", "label", subset_column) if name in header}
            if "path" not in col or "label" not in col:
                raise DataError(f"{csv_path}: a manifest needs the columns 'path' and 'label' (found {header})")
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                where = f"{csv_path}:{reader.line_num}"
                cell = lambda name: cells[col[name]].strip() if name in col and col[name] < len(cells) else ""  # noqa: E731
                if not cell("path"):
                    raise DataError(f"{where}: no path")
                p = csv_path.parent / cell("path")  # an absolute path stays as it is
                label = parse_label(cell("label"), where)
                if inside is not None and (refused := _outside_reason(p, inside)):
                    skipped.append((p, f"{refused} (line {reader.line_num}; --confine)"))
                    continue
                subsets[cell(subset_column) or csv_path.stem].append(len(samples))
                samples.append(Sample(p, label))
    except UnicodeDecodeError as e:
        raise DataError(f"{csv_path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{csv_path}: not a readable CSV file ({e})") from None
    if not samples:
        outside = f" inside its folder ({len(skipped)} outside refused)" if skipped else ""
        raise DataError(f"{csv_path}: the manifest lists no images{outside}")
    return ImageSet(samples=samples, subsets=dict(subsets), root=csv_path.parent, skipped=skipped)


def _outside_reason(path: Path, inside: Path) -> str | None:
    """Why a confined manifest refuses ``path`` (symbolic links and ``..`` resolved; a link loop resolves to a path
    that is then unreadable), or None when it lies inside."""
    try:
        resolved = Path(os.path.realpath(path))
    except (ValueError, OSError) as e:  # a NUL byte in the path, or a path the OS refuses to resolve
        return f"not a usable path ({e})"
    return None if resolved.is_relative_to(inside) else "outside the manifest's folder"


def unlabelled(inputs: list[str | os.PathLike]) -> ImageSet:
    """Images to score without labels (``aigi detect``)."""
    files, skipped = collect_files(inputs)
    samples = [Sample(f, None) for f in files]
    return ImageSet(samples=samples, subsets={"all": list(range(len(samples)))}, skipped=skipped)


def pooled_real(real: str | os.PathLike, fakes: list[str | os.PathLike]) -> tuple[ImageSet, list[str]]:
    """One subset per generator folder (named by it), each with all the images of the ``real`` folder; and notes on
    what was left out (a generator folder named twice, reals inside a generator folder, empty folders)."""
    real, fakes = Path(real), [Path(f) for f in fakes]
    for d in [real, *fakes]:
        if not d.is_dir():
            raise DataError(f"{d}: not a folder" if d.exists() else f"{d}: no such folder")
    real_files, skipped = collect_files([real])
    if not real_files:
        raise DataError(f"--real {real}: no image files found")
    samples = [Sample(f, 0) for f in real_files]
    real_set = {f.resolve() for f in real_files}
    notes: list[str] = []
    gens: list[tuple[Path, list[int]]] = []
    seen: set[Path] = set()
    for d in fakes:
        if d.resolve() in seen:
            notes.append(f"--fake {d} is named twice: used once")
            continue
        seen.add(d.resolve())
        files, s = collect_files([d])
        skipped += s
        inside = [f for f in files if f.resolve() in real_set]
        if inside:
            notes.append(f"--fake {d}: {len(inside)} image(s) of the --real folder left out")
            files = [f for f in files if f.resolve() not in real_set]
        if not files:
            notes.append(f"--fake {d}: no image files, skipped")
            continue
        gens.append((d.resolve(), list(range(len(samples), len(samples) + len(files)))))
        samples += [Sample(f, 1) for f in files]
    if not gens:
        raise DataError("none of the --fake folders holds image files")
    subsets = _generator_subsets(gens, pooled=list(range(len(real_files))))
    return ImageSet(samples=samples, subsets=subsets, root=real.parent, skipped=skipped), notes


def _generator_subsets(gens: list[tuple[Path, list[int]]], pooled: list[int]) -> dict[str, list[int]]:
    """Subset names are the generator folders' names; a clash (or ``MEAN``) takes the parent's name too."""
    names = [d.name for d, _ in gens]
    subsets: dict[str, list[int]] = {}
    for (d, idx), name in zip(gens, names):
        if names.count(name) > 1 or name == "MEAN":
            name = f"{d.parent.name}/{name}"
        base, k = name, 2
        while name in subsets:
            name, k = f"{base} #{k}", k + 1
        subsets[name] = pooled + idx
    return subsets
