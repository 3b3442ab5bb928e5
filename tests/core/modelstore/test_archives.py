"""Uploaded archives are checked member by member before anything is written; a refused
archive leaves nothing behind, and a good one extracts to a folder inspect_folder accepts."""
import io
import tarfile
import zipfile

import pytest

from workers.core.modelstore import ModelFolderError, inspect_folder, safe_extract_archive


def make_zip(path, members):
    """members: (name, bytes) for files, (name, None) for folders, (name, "->target") for symlinks."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            if isinstance(data, str):
                info = zipfile.ZipInfo(name)
                info.external_attr = (0o120777 << 16)  # S_IFLNK: how zip records a symlink
                archive.writestr(info, data.removeprefix("->"))
            elif data is None:
                archive.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            else:
                archive.writestr(name, data)
    return path


def make_tar(path, members):
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data.removeprefix("->")
                archive.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


MAKERS = {"zip": (make_zip, "upload.zip"), "tar": (make_tar, "upload.tar"), "tgz": (make_tar, "upload.tar.gz")}


@pytest.fixture(params=sorted(MAKERS))
def make_archive(request, tmp_path):
    maker, name = MAKERS[request.param]
    return lambda members: maker(tmp_path / name, members)


def refused(archive, dest, **limits) -> ModelFolderError:
    with pytest.raises(ModelFolderError) as error:
        safe_extract_archive(archive, dest, **limits)
    assert not dest.exists()  # nothing extracted...
    assert [p.name for p in dest.parent.iterdir()] == [archive.name]  # ...and no partial folder either
    return error.value


GOOD_FILE = ("model/README.md", b"hello")


@pytest.mark.parametrize(
    "member, reason",
    [
        ("../evil", "'..'"),
        ("model/../../evil", "'..'"),
        ("/etc/evil", "absolute"),
        ("C:/evil", "absolute"),
        ("model\\..\\evil", "backslash"),
        ("model/pytorch_model.bin", "pickle"),
        ("model/modeling_x.py", "custom code"),
    ],
)
def test_a_member_with_a_dangerous_name_refuses_the_whole_archive(make_archive, tmp_path, member, reason):
    archive = make_archive([GOOD_FILE, (member, b"x")])
    error = refused(archive, tmp_path / "out")
    assert error.path == member
    assert reason in error.reason


def test_a_symlink_member_is_refused(make_archive, tmp_path):
    archive = make_archive([GOOD_FILE, ("model/config.json", "->/etc/passwd")])
    error = refused(archive, tmp_path / "out")
    assert (error.path, error.reason.startswith("symlink")) == ("model/config.json", True)


def test_a_hardlink_or_device_member_in_a_tar_is_refused(tmp_path):
    for kind, label in ((tarfile.LNKTYPE, "hardlink"), (tarfile.CHRTYPE, "device"), (tarfile.FIFOTYPE, "fifo")):
        archive = tmp_path / "upload.tar"
        with tarfile.open(archive, "w") as tar:
            info = tarfile.TarInfo("model/odd")
            info.type, info.linkname = kind, "model/README.md"
            tar.addfile(info)
        error = refused(archive, tmp_path / "out")
        assert (error.path, error.reason.split()[0]) == ("model/odd", label)
        archive.unlink()


def test_a_total_size_over_the_limit_is_refused_naming_the_member_that_crosses_it(make_archive, tmp_path):
    archive = make_archive([("model/a.safetensors", b"a" * 600), ("model/b.safetensors", b"b" * 600)])
    error = refused(archive, tmp_path / "out", max_bytes=1000)
    assert error.path == "model/b.safetensors"
    assert "1000 bytes" in error.reason


def test_too_many_members_are_refused(make_archive, tmp_path):
    archive = make_archive([(f"model/f{i}.txt", b"x") for i in range(5)])
    error = refused(archive, tmp_path / "out", max_members=4)
    assert error.path == "model/f4.txt"


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_a_duplicate_member_is_refused(make_archive, tmp_path):
    archive = make_archive([GOOD_FILE, GOOD_FILE])
    assert refused(archive, tmp_path / "out").reason == "duplicate member"


def test_a_file_that_is_also_a_folder_is_refused(make_archive, tmp_path):
    archive = make_archive([("model", b"file"), GOOD_FILE])
    assert refused(archive, tmp_path / "out").path == "model"


def test_a_file_that_is_not_an_archive_is_refused(tmp_path):
    archive = tmp_path / "upload.zip"
    archive.write_bytes(b"just some text, long enough to not be a tar header" * 20)
    assert "unsupported archive type" in refused(archive, tmp_path / "out").reason


def test_a_truncated_archive_is_refused_and_leaves_nothing(tmp_path):
    archive = make_tar(tmp_path / "upload.tar.gz", [("model/big.bin.txt", bytes(range(256)) * 4000)])
    archive.write_bytes(archive.read_bytes()[:-300])
    assert refused(archive, tmp_path / "out").path == "upload.tar.gz"


def test_a_destination_that_is_not_empty_is_refused(make_archive, tmp_path):
    archive = make_archive([GOOD_FILE])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ModelFolderError, match="not an empty folder"):
        safe_extract_archive(archive, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def model_members(folder, prefix):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [(f"{prefix}{p.relative_to(folder).as_posix()}", p.read_bytes()) for p in files]


def test_a_good_archive_extracts_to_its_single_top_folder_which_inspect_folder_accepts(
    make_archive, tmp_path, tiny_model_dir
):
    archive = make_archive([("tiny-llama/", None), *model_members(tiny_model_dir, "tiny-llama/")])
    (tmp_path / "out").mkdir()  # an existing empty destination is fine
    folder = safe_extract_archive(archive, tmp_path / "out")
    assert folder == tmp_path / "out" / "tiny-llama"
    assert [(f.path, f.sha256) for f in inspect_folder(folder).files] == [
        (f.path, f.sha256) for f in inspect_folder(tiny_model_dir).files
    ]


def test_an_archive_without_a_top_folder_extracts_into_the_destination(make_archive, tmp_path, tiny_model_dir):
    archive = make_archive([("./", None), *model_members(tiny_model_dir, "./")])
    folder = safe_extract_archive(archive, tmp_path / "out")
    assert folder == tmp_path / "out"
    assert inspect_folder(folder).kind == "base"


def test_macos_metadata_folders_are_skipped(tmp_path):
    archive = make_zip(tmp_path / "upload.zip", [GOOD_FILE, ("__MACOSX/model/._README.md", b"junk")])
    folder = safe_extract_archive(archive, tmp_path / "out")
    assert folder == tmp_path / "out" / "model"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model"]


def test_a_refused_archive_leaves_an_existing_empty_destination_empty(make_archive, tmp_path):
    archive = make_archive([GOOD_FILE, ("../evil", b"x")])
    (tmp_path / "out").mkdir()
    with pytest.raises(ModelFolderError):
        safe_extract_archive(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, "out"])
