"""Issue #29 case 13 (part): a JPEG cut short with its end marker re-appended is that item's error
record, not a result computed on grey rows; the NaN/Inf input message names the items and indices."""

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from hostile_files import BACKEND, good_images, tiny_artifacts

from batchforge.cli import main
from batchforge.errors import InputValidationError
from batchforge.runtime import images
from batchforge.runtime.validation import IOMeta, validate_feed


def jpeg(height: int = 120, width: int = 160) -> bytes:
    """A smooth random JPEG (enough scan data that a cut lands inside it)."""
    noise = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", cv2.GaussianBlur(noise, (0, 0), 3))
    assert ok
    return encoded.tobytes()


def cut_jpeg(fraction: float = 0.3) -> bytes:
    """The issue's file: the first ``fraction`` of a JPEG, its end-of-image marker re-appended."""
    data = jpeg()
    return data[:int(len(data) * fraction)] + b"\xff\xd9"


def test_a_cut_jpeg_with_its_end_marker_is_that_items_error_record(tmp_path, capsys):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 3)
    (tmp_path / "in" / "cut.jpg").write_bytes(cut_jpeg())
    (tmp_path / "in" / "whole.jpg").write_bytes(jpeg())
    out = tmp_path / "r.jsonl"
    code = main(["run", "tiny", "--input", str(tmp_path / "in"), "--output", str(out), "--output-dir",
                 str(tmp_path / "artifacts"), "--batch-size", "2", "--workers", "2", *BACKEND])
    err = capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 1 and "Traceback" not in err
    assert [r["source"].rsplit("/", 1)[1] for r in records] == ["cut.jpg", "good0.png", "good1.png",
                                                                 "good2.png", "whole.jpg"]
    assert [r["ok"] for r in records] == [False, True, True, True, True]
    assert records[0]["error"] == {
        "type": "InputValidationError",
        "message": f"{records[0]['source']}: truncated or corrupt JPEG: libjpeg reports \"Corrupt JPEG data: "
                   "premature end of data segment\" (the rows it could not decode would come back grey) "
                   "(re-encode or re-transfer the file)"}


def test_opencv_alone_decodes_the_cut_jpeg_with_grey_rows():
    """What the check stands in for: OpenCV returns the cut file whole, its missing rows grey."""
    decoded = cv2.imdecode(np.frombuffer(cut_jpeg(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (120, 160, 3)
    assert (decoded[-8:] == 128).all()
    with pytest.raises(InputValidationError, match="premature end of data segment"):
        images.decode_image(cut_jpeg(), source="cut.jpg")
    assert images.decode_image(jpeg(), source="whole.jpg").shape == (120, 160, 3)


def test_concurrent_decodes_blame_only_the_cut_file():
    data = [cut_jpeg() if i % 3 == 0 else jpeg() for i in range(12)]

    def outcome(i):
        try:
            images.decode_image(data[i], source=str(i))
        except InputValidationError as exc:
            return exc.message
        return "ok"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(outcome, range(12)))
    assert [o == "ok" for o in outcomes] == [i % 3 != 0 for i in range(12)]
    assert all("premature end of data segment" in o for o in outcomes[::3])


def test_other_output_on_stderr_during_a_decode_is_passed_on(capfd, monkeypatch):
    real = images.cv2.imdecode

    def chatty(buffer, flags):
        os.write(2, b"another thread's line\n")
        return real(buffer, flags)

    monkeypatch.setattr(images.cv2, "imdecode", chatty)
    assert images.decode_image(jpeg(), source="whole.jpg").shape == (120, 160, 3)
    with pytest.raises(InputValidationError, match="premature end"):
        images.decode_image(cut_jpeg(), source="cut.jpg")
    err = capfd.readouterr().err
    assert err.count("another thread's line\n") == 2 and "Corrupt JPEG data" not in err and "\x00" not in err


def test_the_nonfinite_input_message_names_the_items_and_indices():
    x = np.zeros((4, 3, 5, 5), np.float32)
    x[0, 1, 4, 4] = np.nan
    x[0, 2, 0, 0] = np.inf
    x[2, 0, 0, 1] = -np.inf
    meta = {"image": IOMeta("image", ("batch", 3, 5, 5), np.dtype(np.float32))}
    with pytest.raises(InputValidationError) as caught:
        validate_feed({"image": x}, meta, None)
    assert caught.value.one_line() == ("input 'image': expected finite values, got 3 NaN/Inf element(s) in 2 "
                                       "of 4 items: item 0 (2, first at (1, 4, 4)), item 2 (1, first at (0, 0, 1))")
    many = np.full((20, 2), np.nan, np.float32)
    meta = {"v": IOMeta("v", ("batch", 2), np.dtype(np.float32))}
    with pytest.raises(InputValidationError, match=r"40 NaN/Inf element\(s\) in 20 of 20 items: item 0 \(2, "
                                                   r"first at \(0,\)\), .*item 7 .*, and 12 more items$"):
        validate_feed({"v": many}, meta, None)


def test_a_warning_beside_another_decode_is_settled_by_decoding_both_again_alone(capfd):
    from batchforge.runtime.jpeg_warnings import decode_with_warnings

    started, warned = threading.Barrier(2), threading.Barrier(2)
    calls = {"cut": 0, "whole": 0}

    def fake(name):
        def decode():
            calls[name] += 1
            first = calls[name] == 1
            if first:
                started.wait(timeout=30)  # both first tries run when the warning is written
            if name == "cut":
                os.write(2, b"Corrupt JPEG data: premature end of data segment\n")
            if first:
                warned.wait(timeout=30)
            os.write(2, f"progress {name}\r".encode())
            return name
        return decode

    with ThreadPoolExecutor(2) as pool:
        cut, whole = pool.map(lambda name: decode_with_warnings(fake(name)), ["cut", "whole"])
    assert cut == ("cut", ["Corrupt JPEG data: premature end of data segment"]) and whole == ("whole", [])
    assert calls == {"cut": 2, "whole": 2}  # each first try had the other beside it
    err = capfd.readouterr().err
    assert "Corrupt JPEG data" not in err and err.count("progress cut\r") == 2 and err.count("progress whole\r") == 2
