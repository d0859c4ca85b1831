"""Issue #29 cases 1 and 2: the pixel limit cannot be bypassed by a TIFF that lists its size twice
(every tag occurrence of every page is read), and a file larger than its pixels can take is
refused before it is read, the read itself bounded."""

import io
import os
import struct
import zlib

import pytest
from hostile_files import good_images, png_claiming, refusal_peak_mib, run_tiny, tiny_artifacts

from batchforge.errors import InputValidationError
from batchforge.runtime import images
from batchforge.runtime.image_header import read_header


def tiff_entries(entries, strip: bytes, order: str = "<") -> bytes:
    """A TIFF with one IFD of ``entries`` (tag, type, count, value; tag 273 points at ``strip``)
    written exactly as given: unsorted and duplicate tags included."""
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = bytearray((b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", 8))
    out += struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        value = data_at if tag == 273 else value
        raw = struct.pack(order + "H", value) + b"\0\0" if kind == 3 else struct.pack(order + "I", value)
        out += struct.pack(order + "HHI", tag, kind, count) + raw
    return bytes(out + struct.pack(order + "I", 0) + strip)


def tiff_listing_twice(width: int, height: int, small: int = 40) -> bytes:
    """A valid grey TIFF of width x height zeros (one deflate strip) whose IFD lists ImageWidth and
    ImageLength twice: the real size first (what libtiff, inside OpenCV, decodes), then ``small``."""
    compressor = zlib.compressobj(9)
    rows = [compressor.compress(bytes(width * min(500, height - y))) for y in range(0, height, 500)]
    strip = b"".join(rows) + compressor.flush()
    return tiff_entries([(256, 4, 1, width), (256, 4, 1, small), (257, 4, 1, height), (257, 4, 1, small),
                         (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1),
                         (278, 4, 1, height), (279, 4, 1, len(strip))], strip)


def sparse_png(path, size: int) -> None:
    """A valid 40x40 PNG padded with zeros to ``size`` bytes (a sparse file: a few KB on disk)."""
    path.write_bytes(png_claiming(40, 40))
    os.truncate(path, size)


def test_a_tiff_listing_its_size_twice_costs_only_its_own_record(tmp_path, capsys):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 3)
    (tmp_path / "in" / "twice.tiff").write_bytes(tiff_listing_twice(3000, 2000))  # decodes fine as 3000x2000
    code, records = run_tiny(tmp_path)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert [r["source"].rsplit("/", 1)[1] for r in records] == ["good0.png", "good1.png", "good2.png", "twice.tiff"]
    assert [r["ok"] for r in records] == [True, True, True, False]
    assert "twice.tiff: TIFF page 1 lists ImageWidth (256) twice" in records[3]["error"]["message"]
    assert "ambiguous and the file is refused" in records[3]["error"]["message"]


def test_a_tiff_listing_a_huge_size_first_is_refused_before_decoding(tmp_path):
    path = tmp_path / "twice.tiff"
    path.write_bytes(tiff_listing_twice(12_000, 12_000))  # 144 megapixels behind a 40x40 second entry
    assert path.stat().st_size < 300_000
    message, peak = refusal_peak_mib(path)
    assert "TIFF page 1 lists ImageWidth (256) twice" in message
    assert peak < 100, f"peak RSS {peak:.0f} MiB"
    print(f"peak RSS refusing a 12000x12000 TIFF that also lists 40x40: {peak:.1f} MiB")


def test_every_page_of_a_tiff_is_held_to_the_pixel_limit():
    first = tiff_entries([(256, 3, 1, 10), (257, 3, 1, 10), (258, 3, 1, 8)], b"")  # ends with its next-IFD offset
    second = struct.pack("<HHHII", 2, 256, 4, 1, 100_000) + struct.pack("<HHII", 257, 4, 1, 100_000) + bytes(4)
    data = first[:-4] + struct.pack("<I", len(first)) + second  # page 2 claims 100000 x 100000
    with pytest.raises(InputValidationError, match=r"TIFF page 2 is 100000x100000 = 10,000,000,000 pixels, "
                                                   r"above the limit of 40,000,000"):
        images.check_header(io.BytesIO(data), source="pages.tiff")
    header = read_header(io.BytesIO(data), "pages.tiff")
    assert (header.width, header.height, header.frames, header.later_pages) == (10, 10, 2, ((100_000, 100_000),))


@pytest.mark.parametrize(("entry", "says"), [
    ((256, 4, 2, 10), "gives ImageWidth as 2 value(s) of type 4; expected one BYTE, SHORT or LONG"),
    ((256, 5, 1, 10), "gives ImageWidth as 1 value(s) of type 5"),  # a RATIONAL
])
def test_a_tiff_dimension_that_is_not_one_integer_is_refused(entry, says):
    data = tiff_entries([entry, (257, 3, 1, 10)], b"")
    with pytest.raises(InputValidationError, match=r"TIFF page 1 " + says.replace("(", r"\(").replace(")", r"\)")):
        read_header(io.BytesIO(data), "x.tiff")


def test_big_endian_tiffs_and_a_later_duplicate_of_any_tag_are_read(tmp_path):
    data = tiff_entries([(256, 3, 1, 7), (257, 4, 1, 9), (258, 3, 1, 16)], b"", order=">")
    assert read_header(io.BytesIO(data), "x.tiff").bit_depth == 16
    twice = tiff_entries([(256, 3, 1, 7), (257, 4, 1, 9), (262, 3, 1, 1), (262, 3, 1, 2)], b"")
    with pytest.raises(InputValidationError, match=r"lists tag 262 \(262\) twice"):
        read_header(io.BytesIO(twice), "x.tiff")


# case 2: no file-size limit -----------------------------------------------------------------
def test_sparse_pngs_larger_than_their_pixels_cost_only_their_records(tmp_path, capsys):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 3)
    sparse_png(tmp_path / "in" / "huge0.png", 2 * 2**30)  # the 2 GiB: above the pixel limit's bound
    sparse_png(tmp_path / "in" / "huge1.png", 300 * 2**20)  # below it, above what 40x40 pixels can take
    code, records = run_tiny(tmp_path, "--workers", "2")
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert [r["ok"] for r in records] == [True, True, True, False, False]
    assert records[3]["error"]["message"] == (
        f"{records[3]['source']}: file is 2,147,483,648 bytes, above the 656,777,216 bytes the pixel limit "
        "of 40,000,000 allows (16 bytes per pixel + 16 MiB of metadata) (downscale or re-encode it, or raise "
        "the limit with --max-pixels)")
    assert records[4]["error"]["message"].startswith(
        f"{records[4]['source']}: file is 314,572,800 bytes, above the 16,802,816 bytes a 40x40 PNG can take")


def test_a_sparse_png_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.png"
    sparse_png(path, 256 * 2**20)
    assert path.stat().st_blocks * 512 < 1_000_000  # sparse: 256 MiB long, a few KB on disk
    message, peak = refusal_peak_mib(path)
    assert "file is 268,435,456 bytes, above the 16,802,816 bytes a 40x40 PNG can take" in message
    assert peak < 100, f"peak RSS {peak:.0f} MiB"
    print(f"peak RSS refusing a 256 MiB sparse 40x40 PNG: {peak:.1f} MiB")


def test_the_size_bound_follows_the_pixel_limit(tmp_path):
    path = tmp_path / "big.png"
    sparse_png(path, 20 * 2**20)
    with pytest.raises(InputValidationError, match=r"file is 20,971,520 bytes, above the 16,793,216 bytes the "
                                                   r"pixel limit of 1,000 allows"):
        images.read_image(path, max_pixels=1000)
    assert images.max_file_bytes(images.DEFAULT_MAX_PIXELS) == 40_000_000 * 16 + 16 * 2**20
    with pytest.raises(InputValidationError, match="above the 16,802,816 bytes a 40x40 PNG can take"):
        images.decode_image(path.read_bytes(), source="big.png")  # bytes from the API, same rule


def test_the_read_stops_at_the_bound_when_the_file_is_longer_than_it_said(tmp_path, monkeypatch):
    path = tmp_path / "grows.png"
    sparse_png(path, 64 * 2**20)
    real = os.fstat
    monkeypatch.setattr(images.os, "fstat", lambda fd: os.stat_result((*real(fd)[:6], 100, *real(fd)[7:])))
    with pytest.raises(InputValidationError, match=r"grows.png: more than 16,802,816 bytes could be read, above "
                                                   r"what its header allows \(the file grew, or is not a regular"):
        images.read_image_bytes(path)
