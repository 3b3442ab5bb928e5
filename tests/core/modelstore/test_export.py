"""archive_stream yields a tar of a folder in chunks, readable back by tarfile, byte-identical."""
import io
import os
import tarfile

import pytest

from workers.core.modelstore import ModelFolderError, archive_size, archive_stream


@pytest.fixture
def big_folder(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(3 * 2**20 + 123))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "sub" / "empty.txt").write_bytes(b"")
    (folder / ("long-name-" * 12 + ".json")).write_text("{}")  # > 100 chars: needs a PAX header
    return folder


def test_the_streamed_tar_reads_back_with_identical_files_under_the_arcname(big_folder):
    data = b"".join(archive_stream(big_folder, "my-model-v2"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        assert all(m.name == "my-model-v2" or m.name.startswith("my-model-v2/") for m in tar.getmembers())
    on_disk = [p for p in big_folder.rglob("*") if p.is_file()]
    expected = {f"my-model-v2/{p.relative_to(big_folder).as_posix()}": p.read_bytes() for p in on_disk}
    assert files == expected


def test_a_multi_mib_folder_is_streamed_in_several_chunks_of_about_a_mib(big_folder):
    chunks = list(archive_stream(big_folder, "m"))
    assert len(chunks) >= 4
    assert max(len(c) for c in chunks) <= 2 * 2**20
    assert sum(len(c) for c in chunks) == archive_size(big_folder, "m")
    assert sum(len(c) for c in chunks) % tarfile.RECORDSIZE == 0


def test_a_folder_with_a_symlink_is_refused_before_the_first_chunk(big_folder):
    os.symlink("/etc/passwd", big_folder / "passwd")
    with pytest.raises(ModelFolderError, match="passwd"):
        archive_stream(big_folder, "m")


@pytest.mark.parametrize("arcname", ["", "/abs", "../up", "a\\b"])
def test_an_unsafe_arcname_is_refused(big_folder, arcname):
    with pytest.raises(ModelFolderError):
        archive_stream(big_folder, arcname)
