"""Seeded calibration and held-out evaluation images for the PP-OCR networks (ocr_models.py).

Real photographs bundled with scikit-image, with words drawn onto them by OpenCV ``putText``
(several fonts, sizes, colours, some on a filled box, some in outline). The calibration and
evaluation sets share no photograph and no word:

  OUT/det_calib/  24 x 640x640 PNG  (detector input size; the spec's stretch resize is identity)
  OUT/det_eval/   16 x 640x640 PNG
  OUT/cls_calib/  24 x 48x192 PNG text-line crops, PP-OCR's classifier input (tight crop, aspect
                  kept, grey right padding), half of them rotated by 180 degrees (class 1)
  OUT/cls_eval/   16 x 48x192 PNG
  OUT/manifest.json  which photograph, crop, words and rotation made every file

    python make_data.py OUT [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from skimage import color, data

# photographs that load offline from scikit-image's own package data (no pooch needed)
CALIB_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                "immunohistochemistry", "motorcycle_left", "camera", "coins", "grass", "clock",
                "moon")
EVAL_PHOTOS = ("retina", "colorwheel", "logo", "brick", "gravel", "cell", "page", "text")

CALIB_WORDS = ("OPEN", "Coffee", "STOP", "exit 24", "Pharmacy", "Hotel", "Sale -50%", "Bus 7",
               "Tickets", "Parking", "Station", "menu", "FRESH BREAD", "No Entry", "Platform 3",
               "Museum", "Taxi", "Library", "Cinema", "2024", "Welcome", "Pizza", "Bank", "ZOO")
EVAL_WORDS = ("Garden", "DANGER", "Bakery", "route 66", "Airport", "Closed", "Market St",
              "Gate B12", "pull", "HOSPITAL", "Ice Cream", "Post Office", "42 km", "Theatre",
              "Books", "Harbor", "Quiet please", "Tram 9", "OUTLET", "Fire exit")

FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
         cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX_SMALL,
         cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)

DET_SIZE = 640
CLS_H, CLS_W = 96, 384


def photo(name: str) -> np.ndarray:
    """RGB uint8 HxWx3."""
    image = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = (color.gray2rgb(image)).astype(np.uint8)
    if image.shape[2] == 4:
        image = image[..., :3]
    return np.ascontiguousarray(image.astype(np.uint8))


def random_crop(image: np.ndarray, rng: np.random.Generator, aspect: float) -> tuple[np.ndarray, list[int]]:
    """A crop of width/height ``aspect`` covering 50-100% of the largest such crop."""
    h, w = image.shape[:2]
    ch = min(h, int(w / aspect))
    ch = max(8, int(ch * rng.uniform(0.5, 1.0)))
    cw = min(w, round(ch * aspect))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return image[y:y + ch, x:x + cw], [x, y, cw, ch]


def colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A random colour far from the local mean colour (legible text)."""
    mean = background.reshape(-1, 3).mean(axis=0)
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if np.abs(c - mean).sum() > 200:
            break
    return tuple(int(v) for v in c)


def draw_word(canvas: np.ndarray, word: str, rng: np.random.Generator, *, scale: float,
              origin: tuple[int, int] | None = None) -> dict:
    font = FONTS[int(rng.integers(len(FONTS)))]
    thickness = int(rng.integers(1, 4)) + int(scale > 2)
    (tw, th), base = cv2.getTextSize(word, font, scale, thickness)
    h, w = canvas.shape[:2]
    if origin is None:
        x = int(rng.integers(0, max(1, w - tw)))
        y = int(rng.integers(th + 2, max(th + 3, h - base - 2)))
    else:
        x, y = origin
    region = canvas[max(0, y - th):y + base, max(0, x):x + tw]
    style = str(rng.choice(["plain", "box", "outline"], p=[0.5, 0.25, 0.25]))
    fg = colour(rng, region if region.size else canvas)
    if style == "box":
        bg = tuple(255 - v for v in fg)
        cv2.rectangle(canvas, (x - 4, y - th - 4), (x + tw + 4, y + base + 2), bg, -1)
    if style == "outline":
        cv2.putText(canvas, word, (x, y), font, scale, tuple(255 - v for v in fg), thickness + 3, cv2.LINE_AA)
    cv2.putText(canvas, word, (x, y), font, scale, fg, thickness, cv2.LINE_AA)
    return {"word": word, "font": int(font), "scale": round(scale, 2), "thickness": thickness,
            "xy": [x, y], "style": style, "colour": list(fg)}


def det_image(name: str, words: tuple[str, ...], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    crop, box = random_crop(photo(name), rng, 1.0)
    canvas = cv2.resize(crop, (DET_SIZE, DET_SIZE), interpolation=cv2.INTER_AREA if crop.shape[0] > DET_SIZE
                        else cv2.INTER_LINEAR)
    canvas = np.ascontiguousarray(canvas)
    drawn = [draw_word(canvas, str(rng.choice(words)), rng, scale=float(rng.uniform(0.8, 3.5)))
             for _ in range(int(rng.integers(4, 9)))]
    return canvas, {"photo": name, "crop_xywh": box, "words": drawn}


def cls_image(name: str, words: tuple[str, ...], rng: np.random.Generator, rotate: bool) -> tuple[np.ndarray, dict]:
    """A text-line crop as PP-OCR's classifier sees one: the line drawn on a photo, cropped
    tightly (a margin of 10-30% of the text height), rotated by 180 degrees for the second
    class, resized to height 48 keeping its aspect ratio (width at most 192) and padded on the
    right to 48x192 with mid grey (PP-OCR pads with 0 after normalising, i.e. 127.5)."""
    crop, box = random_crop(photo(name), rng, CLS_W / CLS_H)
    canvas = np.ascontiguousarray(cv2.resize(crop, (CLS_W, CLS_H), interpolation=cv2.INTER_AREA))
    line = " ".join(str(w) for w in rng.choice(words, size=int(rng.integers(1, 3)), replace=False))
    font_probe = cv2.FONT_HERSHEY_DUPLEX
    (tw, _), _ = cv2.getTextSize(line, font_probe, 1.0, 2)
    scale = min(2.2, CLS_W * rng.uniform(0.6, 0.9) / max(tw, 1))
    (tw, th), base = cv2.getTextSize(line, font_probe, scale, 2)
    origin = (int(rng.integers(8, max(9, CLS_W - tw - 8))), int((CLS_H + th) / 2 - base / 2))
    drawn = draw_word(canvas, line, rng, scale=float(scale), origin=origin)
    (tw, th), base = cv2.getTextSize(line, drawn["font"], drawn["scale"], drawn["thickness"])
    margin = int(th * rng.uniform(0.1, 0.3)) + drawn["thickness"] + 3
    x, y = drawn["xy"]
    y0, y1 = max(0, y - th - margin), min(CLS_H, y + base + margin)
    x0, x1 = max(0, x - margin), min(CLS_W, x + tw + margin)
    line_crop = canvas[y0:y1, x0:x1]
    if rotate:
        line_crop = line_crop[::-1, ::-1]
    out_h, out_w = 48, 192
    width = min(out_w, int(np.ceil(out_h * line_crop.shape[1] / line_crop.shape[0])))
    resized = cv2.resize(np.ascontiguousarray(line_crop), (width, out_h), interpolation=cv2.INTER_AREA)
    image = np.full((out_h, out_w, 3), 128, np.uint8)
    image[:, :width] = resized
    return image, {"photo": name, "crop_xywh": box, "line_xyxy": [x0, y0, x1, y1],
                   "words": [drawn], "rotated_180": rotate}


def write_set(out: Path, kind: str, photos: tuple[str, ...], words: tuple[str, ...], count: int,
              rng: np.random.Generator) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        name = photos[i % len(photos)]
        if kind == "det":
            image, record = det_image(name, words, rng)
        else:
            image, record = cls_image(name, words, rng, rotate=bool(i % 2))
        path = out / f"{i:03d}_{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        records.append({"file": path.name, **record})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib", type=int, default=24)
    parser.add_argument("--eval", type=int, default=16)
    args = parser.parse_args()
    assert not set(CALIB_PHOTOS) & set(EVAL_PHOTOS) and not set(CALIB_WORDS) & set(EVAL_WORDS)
    manifest = {"seed": args.seed}
    for offset, (kind, split, photos, words, count) in enumerate((
            ("det", "calib", CALIB_PHOTOS, CALIB_WORDS, args.calib),
            ("det", "eval", EVAL_PHOTOS, EVAL_WORDS, args.eval),
            ("cls", "calib", CALIB_PHOTOS, CALIB_WORDS, args.calib),
            ("cls", "eval", EVAL_PHOTOS, EVAL_WORDS, args.eval))):
        rng = np.random.default_rng([args.seed, offset])
        manifest[f"{kind}_{split}"] = write_set(args.out / f"{kind}_{split}", kind, photos, words, count, rng)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print({k: len(v) for k, v in manifest.items() if isinstance(v, list)}, "->", args.out)


if __name__ == "__main__":
    main()
