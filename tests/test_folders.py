"""aigi.data.folders: labels and subsets from the layouts the field uses, and CSV manifests."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from PIL import Image

from aigi.data.folders import DataError, discover, read_manifest, unlabelled

AIGI_MINI = Path("/work/shared/data/aigi-mini")


def img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (120, 30, 200)).save(path)
    return path


def tree(root: Path, rel_paths: list[str]) -> Path:
    for r in rel_paths:
        img(root / r)
    return root


def by_name(s) -> dict[str, int]:
    return {p.name: lab for p, lab in ((x.path, x.label) for x in s.samples)}


def subset_names(s, name) -> set[str]:
    return {s.samples[i].path.name for i in s.subsets[name]}


def subset_labels(s, name) -> list[int]:
    return sorted(s.samples[i].label for i in s.subsets[name])


@pytest.mark.parametrize(
    "real,fake",
    [
        ("0_real", "1_fake"),
        ("real", "fake"),
        ("nature", "ai"),
        ("0_REAL", "1_Fake"),
        ("Real", "FAKE"),
        ("NATURE", "Ai"),
    ],
)
def test_label_folder_names_any_case(tmp_path, real, fake):
    root = tree(tmp_path / "data", [f"{real}/r1.png", f"{real}/r2.jpg", f"{fake}/f1.png"])
    s = discover(root)
    assert by_name(s) == {"r1.png": 0, "r2.jpg": 0, "f1.png": 1}
    assert list(s.subsets) == ["data"]  # flat label folders at the root: one subset named after the root
    assert subset_labels(s, "data") == [0, 0, 1]
    assert s.skipped == []


def test_nested_folders_inherit_label(tmp_path):
    root = tree(
        tmp_path / "d",
        ["0_real/cats/indoor/a.png", "0_real/cats/b.png", "1_fake/cats/deep/er/c.png", "1_fake/cats/d.png"],
    )
    s = discover(root)
    assert by_name(s) == {"a.png": 0, "b.png": 0, "c.png": 1, "d.png": 1}
    assert set(s.subsets) == {"cats"}  # sub-folders below both label folders pair up by name
    assert subset_labels(s, "cats") == [0, 0, 1, 1]


def test_deepest_label_folder_wins(tmp_path):
    root = tree(tmp_path / "d", ["fake/real/x.png", "fake/y.png"])
    s = discover(root)
    assert by_name(s) == {"x.png": 0, "y.png": 1}


def test_benchmark_root_with_subsets(tmp_path):
    root = tree(
        tmp_path / "bench",
        [
            "a/0_real/r1.png",
            "a/0_real/r2.png",
            "a/1_fake/f1.png",
            "b/0_real/r3.png",
            "b/1_fake/f2.png",
            "b/1_fake/f3.png",
        ],
    )
    s = discover(root)
    assert sorted(s.subsets) == ["a", "b"]
    assert subset_names(s, "a") == {"r1.png", "r2.png", "f1.png"}
    assert subset_names(s, "b") == {"r3.png", "f2.png", "f3.png"}
    assert subset_labels(s, "a") == [0, 0, 1]
    assert subset_labels(s, "b") == [0, 1, 1]
    assert "a: 2 real + 1 generated" in s.describe()


def test_pooled_reals_against_generators(tmp_path):
    root = tree(
        tmp_path / "test",
        ["0_real/r1.png", "0_real/r2.png", "0_real/r3.png", "1_fake/g1/f1.png", "1_fake/g2/f2.png", "1_fake/g2/f3.png"],
    )
    s = discover(root)
    assert sorted(s.subsets) == ["g1", "g2"]
    assert subset_names(s, "g1") == {"r1.png", "r2.png", "r3.png", "f1.png"}
    assert subset_names(s, "g2") == {"r1.png", "r2.png", "r3.png", "f2.png", "f3.png"}
    # the reals are shared by index, not copied
    assert len(s.samples) == 6
    reals_g1 = sorted(i for i in s.subsets["g1"] if s.samples[i].label == 0)
    reals_g2 = sorted(i for i in s.subsets["g2"] if s.samples[i].label == 0)
    assert reals_g1 == reals_g2 and len(reals_g1) == 3


def test_genimage_like_layout(tmp_path):
    root = tree(
        tmp_path / "genimage",
        [
            "ADM/val/nature/n1.JPEG",
            "ADM/val/nature/n2.JPEG",
            "ADM/val/ai/a1.PNG",
            "BigGAN/val/nature/n3.JPEG",
            "BigGAN/val/ai/a2.png",
        ],
    )
    s = discover(root)
    assert sorted(s.subsets) == ["ADM/val", "BigGAN/val"]
    assert subset_names(s, "ADM/val") == {"n1.JPEG", "n2.JPEG", "a1.PNG"}
    assert subset_labels(s, "ADM/val") == [0, 0, 1]
    assert subset_labels(s, "BigGAN/val") == [0, 1]


def test_csv_manifest(tmp_path):
    root = tmp_path / "m"
    img(root / "imgs/a.png")
    img(root / "imgs/b.png")
    absolute = img(tmp_path / "elsewhere/c.png")
    csv = root / "list.csv"
    csv.write_text(f"path,label,subset\nimgs/a.png,real,s1\nimgs/b.png,1,s1\n{absolute},fake,s2\n")
    s = discover(csv)
    assert [x.path for x in s.samples] == [root / "imgs/a.png", root / "imgs/b.png", absolute]
    assert s.labels == [0, 1, 1]
    assert s.subsets == {"s1": [0, 1], "s2": [2]}
    assert s.root == root


def test_csv_manifest_without_subset_column(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("path,label\nx.png,nature\ny.png,ai\nz.png,0\n")
    s = read_manifest(csv)
    assert s.labels == [0, 1, 0]
    assert s.subsets == {"mine": [0, 1, 2]}
    assert s.samples[0].path == tmp_path / "x.png"


def test_csv_manifest_bad_label_names_file_and_line(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("path,label\na.png,0\n\nb.png,maybe\n")  # the bad row is on line 4 (after a blank line)
    with pytest.raises(DataError) as ei:
        discover(csv)
    msg = str(ei.value)
    assert f"{csv}:4" in msg
    assert "maybe" in msg


def test_csv_manifest_short_row_is_a_data_error(tmp_path):
    csv = tmp_path / "short.csv"
    csv.write_text("path,label\na.png,1\nb.png\n")
    with pytest.raises(DataError, match=r"short\.csv:3"):
        discover(csv)


def test_csv_manifest_missing_columns(tmp_path):
    csv = tmp_path / "cols.csv"
    csv.write_text("file,class\na.png,1\n")
    with pytest.raises(DataError, match="path"):
        discover(csv)


def test_csv_manifest_empty(tmp_path):
    csv = tmp_path / "none.csv"
    csv.write_text("path,label\n")
    with pytest.raises(DataError, match="no images"):
        discover(csv)


def test_unlabelled_and_non_image_files_are_skipped_with_reason(tmp_path):
    root = tree(tmp_path / "d", ["0_real/r.png", "1_fake/f.png", "misc/stray.png", "loose.jpg"])
    (root / "0_real/notes.txt").write_text("hello")
    (root / "1_fake/meta.json").write_text("{}")
    (root / ".hidden.png").write_bytes(b"")  # hidden files and folders are not data, but named as skipped
    tree(root / "0_real" / ".thumbs", ["t.png"])
    s = discover(root)
    assert by_name(s) == {"r.png": 0, "f.png": 1}
    skipped = {p.name: reason for p, reason in s.skipped}
    assert set(skipped) == {"stray.png", "loose.jpg", "notes.txt", "meta.json", ".hidden.png", ".thumbs"}
    assert skipped[".hidden.png"] == "hidden file (name starts with '.')"
    assert skipped[".thumbs"] == "hidden folder (name starts with '.'): not searched"
    assert "no label folder" in skipped["stray.png"]
    assert "no label folder" in skipped["loose.jpg"]
    assert "not an image" in skipped["notes.txt"]
    assert "not an image" in skipped["meta.json"]


def test_tree_without_labels_is_a_data_error(tmp_path):
    root = tree(tmp_path / "d", ["cats/a.png", "dogs/b.png"])
    with pytest.raises(DataError) as ei:
        discover(root)
    msg = str(ei.value)
    assert str(root) in msg
    assert "no labelled images" in msg and "0_real" in msg
    assert "2 image files" in msg


def test_empty_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no labelled images"):
        discover(tmp_path / "empty")


def test_missing_root_and_non_csv_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        discover(tmp_path / "missing")
    f = img(tmp_path / "one.png")
    with pytest.raises(DataError, match="CSV"):
        discover(f)


def test_unlabelled_inputs(tmp_path):
    root = tree(tmp_path / "d", ["a.png", "sub/b.jpg"])
    (root / "readme.md").write_text("x")
    explicit = tmp_path / "odd.name"
    explicit.write_bytes(b"??")
    s = unlabelled([root, explicit])
    assert sorted(p.path.name for p in s.samples) == ["a.png", "b.jpg", "odd.name"]
    assert all(x.label is None for x in s.samples)
    assert s.subsets == {"all": [0, 1, 2]}
    assert [p.name for p, _ in s.skipped] == ["readme.md"]


def test_aigi_mini_test_split():
    root = AIGI_MINI / "test"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    s = discover(root)
    assert len(s.subsets) == 7
    n_real = sum(1 for x in s.samples if x.label == 0)
    assert n_real == 418
    for name, idx in s.subsets.items():
        labels = [s.samples[i].label for i in idx]
        assert labels.count(0) == 418, name
        assert labels.count(1) > 0, name
    assert {"dalle2", "dalle_mini"} <= set(s.subsets)


def test_aigi_mini_forensynths_thumbs():
    root = AIGI_MINI / "forensynths_thumbs"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    s = discover(root)
    assert len(s.subsets) == 10
    assert "biggan" in s.subsets and "stylegan" in s.subsets
    for name, idx in s.subsets.items():
        labels = [s.samples[i].label for i in idx]
        assert (labels.count(0), labels.count(1)) == (20, 20), name


def test_root_that_is_itself_a_label_folder(tmp_path):
    from PIL import Image

    from aigi.data.folders import discover

    reals = tmp_path / "0_real"
    (reals / "night").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(reals / "a.jpg")
    Image.new("RGB", (8, 8)).save(reals / "night" / "b.jpg")
    s = discover(reals)
    assert [x.label for x in s.samples] == [0, 0]
    assert sum(len(v) for v in s.subsets.values()) == 2


# -- what a walk meets: special files, unreadable and too-long folders; confined manifests ---------------------------
def test_fifo_and_socket_are_skipped_as_what_they_are(tmp_path, monkeypatch):
    import socket

    root = tree(tmp_path / "d", ["ok.png"])
    os.mkfifo(root / "pipe.png")
    monkeypatch.chdir(root)  # a socket's path must be short: bind it by its relative name
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock.png")
        os.mkfifo(tmp_path / "named.jpg")
        s = unlabelled([root, tmp_path / "named.jpg"])  # would block for ever if it opened a FIFO
    assert [x.path.name for x in s.samples] == ["ok.png"]
    assert {p.name: reason for p, reason in s.skipped} == {
        "pipe.png": "not a regular file (FIFO)",
        "sock.png": "not a regular file (socket)",
        "named.jpg": "not a regular file (FIFO)",
    }


def test_named_missing_file_still_gets_its_row(tmp_path):
    s = unlabelled([tmp_path / "missing.jpg"])
    assert [x.path.name for x in s.samples] == ["missing.jpg"] and s.skipped == []  # the reader says "file not found"


def test_unreadable_sub_folder_is_a_skipped_entry(tmp_path, monkeypatch):
    root = tree(tmp_path / "d", ["0_real/r.png", "1_fake/f.png", "1_fake/locked/x.png"])
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):  # root reads anything: refuse the way a chmod 000 folder would
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    s = discover(root)
    assert by_name(s) == {"r.png": 0, "f.png": 1}
    assert s.skipped == [(root / "1_fake" / "locked", "cannot read folder (Permission denied)")]


def test_folder_deeper_than_path_max_is_a_skipped_entry(tmp_path, monkeypatch):
    root = tree(tmp_path / "d", ["a.png"])
    monkeypatch.chdir(root)
    for _ in range(os.pathconf(root, "PC_PATH_MAX") // 200 + 1):  # each step is a short relative path
        os.mkdir("x" * 200)
        os.chdir("x" * 200)
    img(Path("deep.png"))
    s = unlabelled([root])
    assert [x.path.name for x in s.samples] == ["a.png"]
    ((where, reason),) = s.skipped
    assert reason == "cannot read folder (File name too long)" and str(where).startswith(str(root / ("x" * 200)))


def _manifest_with_outside_rows(tmp_path) -> Path:
    folder = tmp_path / "shared"
    img(folder / "in.png")
    img(tmp_path / "secret.png")
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    rows = ["in.png,real", "../secret.png,fake", "../missing.png,fake", f"{tmp_path / 'secret.png'},fake", "link.png,1"]
    (folder / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return folder / "m.csv"


def test_manifest_reads_any_path_unless_confined(tmp_path):
    csv = _manifest_with_outside_rows(tmp_path)
    assert len(read_manifest(csv).samples) == 5  # a trusted manifest: as before
    s = discover(csv, confine=True)
    assert [x.path.name for x in s.samples] == ["in.png"]
    reasons = [(p.name, r) for p, r in s.skipped]
    assert reasons == [
        ("secret.png", "outside the manifest's folder (line 3; --confine)"),
        ("missing.png", "outside the manifest's folder (line 4; --confine)"),  # same reason: existence not told
        ("secret.png", "outside the manifest's folder (line 5; --confine)"),
        ("link.png", "outside the manifest's folder (line 6; --confine)"),  # symbolic links are resolved
    ]


def test_confined_manifest_with_nothing_inside_is_a_data_error(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\n/etc/passwd,real\n")
    with pytest.raises(DataError, match=r"lists no images inside its folder \(1 outside refused\)"):
        read_manifest(csv, confine=True)


def test_unreadable_root_is_named_as_the_reason(tmp_path, monkeypatch):
    root = tree(tmp_path / "d", ["0_real/r.png", "1_fake/f.png"])

    def scandir(path="."):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"d: cannot read folder \(Permission denied\)$"):
        discover(root)


def test_confined_manifest_row_with_a_nul_byte_is_skipped(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "r.png")
    (tmp_path / "m.csv").write_text('path,label\n"a\x00b.png",0\nr.png,0\n')
    found = read_manifest(tmp_path / "m.csv", confine=True)
    assert [s.path.name for s in found.samples] == ["r.png"]
    ((path, reason),) = found.skipped
    assert reason.startswith("not a usable path (") and reason.endswith("(line 2; --confine)")
