"""Issue #29 case 6: a bundle tarball is checked before anything is unpacked. Headers, SHA256SUMS and
bundle.json's sizes first; unlisted, sparse, oversized and too many members are refused with nothing
written (measured: the bytes this process writes, from /proc/self/io), and many problems of a kind
are a count, not every name. Hostile members are zeros or GNU sparse headers: a few KiB on disk."""

import gzip
import io
import tarfile
import tempfile

import pytest
from hostile_files import BACKEND, good_images, tiny_artifacts

from batchforge.cli import main
from batchforge.runtime import bundle as bundle_module

MiB = 2 ** 20


class Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as they are read (never held)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def written_bytes() -> int:
    """Bytes this process has passed to write() so far (the kernel's count)."""
    with open("/proc/self/io") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


@pytest.fixture
def made(tmp_path, monkeypatch, capsys):
    """A valid folder bundle of the tiny model, its files, and a private temp folder for extraction."""
    tiny_artifacts(tmp_path / "artifacts")
    assert main(["bundle", "tiny", "--out", str(tmp_path / "b"), "--output-dir", str(tmp_path / "artifacts")]) == 0
    capsys.readouterr()
    good_images(tmp_path / "in", 1)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    files = sorted(p for p in (tmp_path / "b").rglob("*") if p.is_file())
    return tmp_path / "b", files, temp


def pack(path, bundle_dir, files, before=(), replace=None):
    """A .tar.gz of the bundle's files with hostile ``before`` members first: (TarInfo, fileobj)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for info, data in before:
            tar.addfile(info, data)
        for file in files:
            name = file.relative_to(bundle_dir).as_posix()
            if replace and name in replace:
                info = tarfile.TarInfo(name)
                info.size = replace[name]
                tar.addfile(info, Zeros(replace[name]))
            else:
                tar.add(file, arcname=name)
    return path


def refused_run(tmp_path, capsys, bundle_path):
    start = written_bytes()
    out = tmp_path / "r.jsonl"
    code = main(["run", "--bundle", str(bundle_path), "--input", str(tmp_path / "in"), "--output", str(out),
                 *BACKEND])
    written = written_bytes() - start
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    return err, written


def zero_member(name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    return info, Zeros(size)


def test_an_unlisted_large_member_is_refused_before_anything_is_written(tmp_path, capsys, made):
    bundle_dir, files, temp = made
    tar = pack(tmp_path / "b.tar.gz", bundle_dir, files, before=[zero_member("artifacts/tiny/pad.bin", 64 * MiB)])
    assert tar.stat().st_size < MiB  # 64 MiB of zeros compress to a few hundred KiB
    err, written = refused_run(tmp_path, capsys, tar)
    assert "artifacts/tiny/pad.bin is not listed in SHA256SUMS" in err
    assert written < 64 * 1024  # was 64 MiB: the member was extracted before the refusal
    assert list(temp.iterdir()) == []


def gnu_sparse_member(name, real_size):
    """A GNU sparse header ('S') claiming ``real_size`` bytes with no stored data (a 10 KiB archive
    can claim gigabytes): tarfile writes no sparse headers, so the fields are set by hand."""
    info = tarfile.TarInfo(name)
    info.size = 0
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    block[156:157] = tarfile.GNUTYPE_SPARSE
    block[386:398] = b"%011o\0" % 0  # one region: offset 0, 0 bytes stored
    block[398:410] = b"%011o\0" % 0
    block[483:495] = b"%011o\0" % real_size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:512])
    return bytes(block[:512])


def test_a_gnu_sparse_member_is_refused_before_it_is_unpacked_or_hashed(tmp_path, capsys, made, monkeypatch):
    bundle_dir, files, temp = made
    raw = tmp_path / "plain.tar"
    with tarfile.open(raw, "w", format=tarfile.GNU_FORMAT) as tar:
        for file in files:
            tar.add(file, arcname=file.relative_to(bundle_dir).as_posix())
    body = raw.read_bytes()
    end = body.rindex(b"\0" * 1024, 0, len(body))  # before the end-of-archive blocks
    content = body[:end].rstrip(b"\0")
    content += b"\0" * (-len(content) % 512)
    hostile = content + gnu_sparse_member("artifacts/tiny/model.fp32.onnx.sparse", 20 * 2 ** 30) + b"\0" * 1024
    tar_gz = tmp_path / "s.tar.gz"
    tar_gz.write_bytes(gzip.compress(hostile, 1))
    assert tar_gz.stat().st_size < 16 * 1024
    hashed = []
    monkeypatch.setattr(bundle_module, "sha256_file", lambda p, *a: hashed.append(p) or "0" * 64)
    err, written = refused_run(tmp_path, capsys, tar_gz)
    assert "'artifacts/tiny/model.fp32.onnx.sparse' is a sparse file (21,474,836,480 bytes, mostly not stored)" in err
    assert written < 64 * 1024 and hashed == [] and list(temp.iterdir()) == []


def test_a_listed_member_larger_than_recorded_is_refused_before_it_is_written(tmp_path, capsys, made):
    bundle_dir, files, temp = made
    tar = pack(tmp_path / "o.tar.gz", bundle_dir, files, replace={"artifacts/tiny/model.fp32.onnx": 32 * MiB})
    err, written = refused_run(tmp_path, capsys, tar)
    assert "artifacts/tiny/model.fp32.onnx is 33,554,432 bytes, bundle.json records" in err
    assert written < 64 * 1024 and list(temp.iterdir()) == []


def test_many_unlisted_members_are_a_count_not_every_name(tmp_path, capsys, made):
    bundle_dir, files, _ = made
    extra = [zero_member(f"junk/{i:05d}", 0) for i in range(300)]
    err, _ = refused_run(tmp_path, capsys, pack(tmp_path / "m.tar.gz", bundle_dir, files, before=extra))
    assert "junk/00000 is not listed in SHA256SUMS; junk/00001 is not listed" in err
    assert "junk/00004 is not listed in SHA256SUMS; 295 more are not listed in SHA256SUMS" in err
    assert "junk/00005" not in err and len(err) < 1000


def test_more_entries_than_a_bundle_holds_are_refused_while_reading_headers(tmp_path, capsys, made, monkeypatch):
    bundle_dir, files, _ = made
    monkeypatch.setattr(bundle_module, "MAX_MEMBERS", 50)
    extra = [zero_member(f"junk/{i:05d}", 0) for i in range(60)]
    err, _ = refused_run(tmp_path, capsys, pack(tmp_path / "n.tar.gz", bundle_dir, files, before=extra))
    assert "it has more than 50 entries (a bundle holds a few dozen files)" in err


def test_a_valid_tarball_unpacks_only_its_listed_files(tmp_path, capsys, made):
    bundle_dir, files, _ = made
    tar = pack(tmp_path / "ok.tar.gz", bundle_dir, files)
    listed = sum(f.stat().st_size for f in files)
    start = written_bytes()
    code = main(["run", "--bundle", str(tar), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "r.jsonl"),
                 *BACKEND])
    assert code == 0, capsys.readouterr().err
    results = (tmp_path / "r.jsonl").stat().st_size
    assert written_bytes() - start < listed + results + 64 * 1024


def test_a_bundle_written_by_batchforge_starts_with_its_list_and_record(tmp_path, made):
    out = tmp_path / "t.tar.gz"
    assert main(["bundle", "tiny", "--out", str(out), "--output-dir", str(tmp_path / "artifacts")]) == 0
    with tarfile.open(tmp_path / "t.tar.gz") as tar:
        assert tar.getnames()[:2] == ["SHA256SUMS", "bundle.json"]


def test_after_the_list_an_unlisted_member_is_refused_at_its_header(tmp_path, capsys, made, monkeypatch):
    """The list first (as `bundle` writes it): the 64 MiB member's data is never decompressed."""
    bundle_dir, files, temp = made
    first = [bundle_dir / "SHA256SUMS", bundle_dir / "bundle.json"]
    rest = [f for f in files if f not in first]
    with tarfile.open(tmp_path / "f.tar.gz", "w:gz", compresslevel=1) as tar:
        for file in first:
            tar.add(file, arcname=file.name)
        info, data = zero_member("artifacts/tiny/pad.bin", 64 * MiB)
        tar.addfile(info, data)
        for file in rest:
            tar.add(file, arcname=file.relative_to(bundle_dir).as_posix())
    inflated = []
    real = gzip._GzipReader.read  # what decompresses, for reads and forward seeks alike

    def counting(self, size=-1):
        data = real(self, size)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(gzip._GzipReader, "read", counting)
    err, written = refused_run(tmp_path, capsys, tmp_path / "f.tar.gz")
    assert "failed verification: artifacts/tiny/pad.bin is not listed in SHA256SUMS" in err
    assert sum(inflated) < 4 * MiB  # the headers and the two small records only, not the 64 MiB
    assert written < 64 * 1024 and list(temp.iterdir()) == []


def test_a_folder_bundle_file_grown_past_its_recorded_size_is_refused_before_hashing(tmp_path, capsys, made,
                                                                                     monkeypatch):
    import os

    bundle_dir, _, _ = made
    os.truncate(bundle_dir / "artifacts" / "tiny" / "model.fp32.onnx", 2 ** 30)  # sparse: no disk used
    hashed = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda p, *a: hashed.append(str(p)) or real(p, *a))
    err, _ = refused_run(tmp_path, capsys, bundle_dir)
    assert "artifacts/tiny/model.fp32.onnx is 1,073,741,824 bytes, bundle.json records" in err
    assert hashed == []
