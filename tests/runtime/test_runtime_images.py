import cv2
import numpy as np
import pytest

from batchforge.errors import InputValidationError
from batchforge.runtime.images import decode_image, list_images, read_image, to_rgb_uint8, write_image
from batchforge.runtime.preprocess import Geometry, letterbox_geometry, preprocess_image
from batchforge.runtime.spec import Preprocess, ResizeMode


def encode(array: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


def test_color_png_decodes_to_rgb():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    out = decode_image(encode(rgb[:, :, ::-1]))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 200).all() and (out[..., 2] == 0).all()


def test_grayscale_is_replicated():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    out = decode_image(encode(gray))
    assert out.shape == (4, 5, 3)
    assert (out[..., 0] == gray).all() and (out[..., 2] == gray).all()


def test_rgba_drops_alpha_and_keeps_colour():
    bgra = np.zeros((3, 3, 4), np.uint8)
    bgra[..., 2] = 10  # red in BGR(A) order
    bgra[..., 3] = 0  # fully transparent: colour is kept as stored
    out = decode_image(encode(bgra))
    assert out.shape == (3, 3, 3) and (out[..., 0] == 10).all()


def test_sixteen_bit_is_scaled_by_257():
    img = np.array([[0, 257, 65535, 32896]], np.uint16)
    out = decode_image(encode(img))
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]


def test_float_arrays_are_refused_not_cast():
    with pytest.raises(InputValidationError, match="expected uint8 or uint16 pixels, got float32"):
        to_rgb_uint8(np.zeros((4, 4, 3), np.float32))


def test_zero_size_truncated_and_garbage_are_refused(tmp_path):
    with pytest.raises(InputValidationError, match="empty file"):
        decode_image(b"")
    jpeg = encode(np.full((32, 32, 3), 90, np.uint8), ".jpg")
    with pytest.raises(InputValidationError, match="truncated"):
        decode_image(jpeg[: len(jpeg) // 2])
    png = encode(np.full((32, 32, 3), 90, np.uint8))
    with pytest.raises(InputValidationError, match="truncated"):
        decode_image(png[:-20])
    with pytest.raises(InputValidationError, match="not a decodable image"):
        decode_image(b"this is text, not an image")
    with pytest.raises(InputValidationError, match="zero-size"):
        to_rgb_uint8(np.zeros((0, 4, 3), np.uint8))


def test_pixel_limit_is_documented_and_enforced():
    with pytest.raises(InputValidationError, match="above the limit of 100") as info:
        to_rgb_uint8(np.zeros((20, 20, 3), np.uint8), max_pixels=100)
    assert "--max-pixels" in info.value.one_line()


def test_read_write_and_list(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    write_image(tmp_path / "b.png", img)
    write_image(tmp_path / "a.png", img)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.png"]
    assert [p.name for p in list_images(str(tmp_path / "*"))] == ["a.png", "b.png", "notes.txt"]
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)
    with pytest.raises(InputValidationError, match="cannot read"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputValidationError, match="neither a folder"):
        list_images(tmp_path / "nothing-here")


@pytest.mark.parametrize(("h", "w"), [(480, 640), (640, 480), (100, 100), (1, 999)])
def test_letterbox_geometry_inverse_is_exact(h, w):
    pre = Preprocess(64, 64, ResizeMode.LETTERBOX)
    img = np.zeros((h, w, 3), np.uint8)
    chw, geo = preprocess_image(img, pre)
    assert chw.shape == (3, 64, 64)
    corners = np.array([[0.0, 0.0, w, h]])
    new_h, new_w, top, left = letterbox_geometry(h, w, 64, 64)
    in_input = np.array([[left, top, left + new_w, top + new_h]], float)
    np.testing.assert_allclose(geo.boxes_to_original(in_input), corners, atol=1e-9)


def test_preprocess_normalises_and_orders_channels():
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = 255
    rgb, _ = preprocess_image(img, Preprocess(2, 2, mean=(0, 0, 0), std=(1, 1, 1)))
    bgr, _ = preprocess_image(img, Preprocess(2, 2, channel_order="BGR", mean=(0, 0, 0), std=(1, 1, 1)))
    assert rgb[0].max() == 1.0 and rgb[2].max() == 0.0
    assert bgr[2].max() == 1.0 and bgr[0].max() == 0.0


def test_geometry_maps_points_back():
    geo = Geometry(100, 200, 0.5, 0.25, 10.0, 4.0)
    np.testing.assert_allclose(geo.to_original(np.array([[10.0, 4.0], [20.0, 9.0]])), [[0, 0], [20, 20]])
