"""Issue #14 cases 2 and 3: a lying image header costs only its own input, and the pixel limit
is applied from the header, before anything is decoded."""

import io

import cv2
import numpy as np
import pytest
from hostile_files import good_images, png_claiming, refusal_peak_mib, run_tiny, tiny_artifacts, zero_png

from batchforge.errors import InputValidationError
from batchforge.runtime import images
from batchforge.runtime.image_header import read_header


def test_a_header_claiming_100000_squared_costs_only_its_own_record(tmp_path, capsys):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in")
    bomb = png_claiming(100_000, 100_000)
    assert len(bomb) < 70  # the tester's file was 69 bytes
    (tmp_path / "in" / "bomb.png").write_bytes(bomb)
    code, records = run_tiny(tmp_path)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert [r["source"].rsplit("/", 1)[1] for r in records] == ["bomb.png", *(f"good{i}.png" for i in range(5))]
    assert [r["ok"] for r in records] == [False, True, True, True, True, True]
    assert "100000x100000 = 10,000,000,000 pixels, above the limit of 40,000,000" in records[0]["error"]["message"]


def test_a_decoder_error_becomes_that_inputs_record(tmp_path, monkeypatch):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 3)
    real, planted = cv2.imdecode, (tmp_path / "in" / "good1.png").read_bytes()

    def failing(buf, flags):
        if buf.tobytes() == planted:
            raise cv2.error("OpenCV(4.x) error: (-215:Assertion failed) planted in imdecode")
        return real(buf, flags)

    monkeypatch.setattr(images.cv2, "imdecode", failing)
    code, records = run_tiny(tmp_path)
    assert code == 1 and [r["ok"] for r in records] == [True, False, True]
    assert "OpenCV could not decode it" in records[1]["error"]["message"]


def test_any_exception_while_preparing_an_input_is_its_record(tmp_path, monkeypatch):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 2)
    from batchforge.runtime.pipelines.base import Pipeline

    real = Pipeline.load

    def load(self, source):
        if source.endswith("good0.png"):
            raise MemoryError("planted")
        return real(self, source)

    monkeypatch.setattr(Pipeline, "load", load)
    code, records = run_tiny(tmp_path)
    assert code == 1 and [r["ok"] for r in records] == [False, True]
    assert records[0]["error"] == {"type": "InputValidationError",
                                   "message": records[0]["source"] + ": could not be read (MemoryError): planted"}


@pytest.mark.parametrize(("suffix", "params", "fmt"), [
    (".png", [], "PNG"), (".jpg", [], "JPEG"), (".bmp", [], "BMP"), (".tiff", [], "TIFF"),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "WebP"), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "WebP")])
def test_headers_of_every_listed_format_give_opencvs_size(suffix, params, fmt):
    image = np.random.default_rng(1).integers(0, 256, (13, 29, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(suffix, image, params)
    assert ok
    header = read_header(io.BytesIO(encoded.tobytes()), "x")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    assert (header.format, header.width, header.height) == (fmt, decoded.shape[1], decoded.shape[0])
    assert header.bit_depth in (8, 24) and header.frames == 1


def test_unknown_formats_and_truncated_headers_are_named():
    with pytest.raises(InputValidationError, match="expected PNG, JPEG, BMP, TIFF, WebP"):
        read_header(io.BytesIO(b"P6\n20000 20000\n255\n"), "x.ppm")
    with pytest.raises(InputValidationError, match="truncated image header"):
        read_header(io.BytesIO(b"\xff\xd8\xff\xe0\x00\x10JFIF"), "x.jpg")


def test_a_20000_squared_png_is_refused_from_its_header_in_under_100_mb(tmp_path):
    path = tmp_path / "zeros.png"
    zero_png(path, 20_000)
    assert path.stat().st_size < 2_000_000  # small file, 400 MB of pixels
    message, peak_mib = refusal_peak_mib(path)
    assert "20000x20000 = 400,000,000 pixels, above the limit of 40,000,000" in message
    assert peak_mib < 100, f"peak RSS {peak_mib:.0f} MiB"
    print(f"peak RSS refusing the 20000x20000 PNG: {peak_mib:.1f} MiB")


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + len(data).to_bytes(4, "little") + data + b"\x00" * (len(data) & 1)


def test_frame_counts_are_read_from_the_headers(tmp_path):
    pages = [np.full((9, 7), v, np.uint8) for v in (10, 20, 30)]
    assert cv2.imwritemulti(str(tmp_path / "p.tiff"), pages)
    with open(tmp_path / "p.tiff", "rb") as fh:
        tiff = read_header(fh, "p.tiff")
    assert (tiff.width, tiff.height, tiff.bit_depth, tiff.frames) == (7, 9, 8, 3)
    data = cv2.imencode(".png", pages[0])[1].tobytes()
    actl = b"\x00\x00\x00\x08acTL" + (4).to_bytes(4, "big") + bytes(4) + b"\x00\x00\x00\x00"
    apng = data[:33] + actl + data[33:]  # after the signature and IHDR
    assert read_header(io.BytesIO(apng), "a.png").frames == 4
    vp8x = _riff_chunk(b"VP8X", bytes([0x02, 0, 0, 0]) + (99).to_bytes(3, "little") + (49).to_bytes(3, "little"))
    body = b"WEBP" + vp8x + _riff_chunk(b"ANIM", bytes(6)) + _riff_chunk(b"ANMF", bytes(17)) * 2
    webp = read_header(io.BytesIO(b"RIFF" + len(body).to_bytes(4, "little") + body), "a.webp")
    assert (webp.width, webp.height, webp.frames) == (100, 50, 2)
