"""``detector``: a YOLO-style anchor-free detector on a MobileNetV3-Large backbone, 640x640.

The class list lives in the spec's post-processing options (``class_names``) and fixes the
width of the class head; ``build_detector`` builds the same architecture for another list (a
user model: ``batchforge export --factory my_module:my_factory --spec my_spec.json``).
See ``batchforge.export.zoo.dense`` for the architecture and the calibrated init, and
``batchforge.runtime.post.detection`` for the decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision

from batchforge.export.reference import torch_preprocess
from batchforge.export.registry import register
from batchforge.export.samples import SEED_INIT, generate
from batchforge.export.zoo.dense import ChannelTarget, DenseDetector, InitTargets, initialise
from batchforge.export.zoo.init import seeded
from batchforge.runtime.spec import ModelSpec, Preprocess, ProfileRange, ResizeMode, TensorSpec

INPUT_SIZE = 640
INIT_IMAGES = 8
SEED = 31
CLASS_NAMES = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light",
               "dog", "cat", "bottle")
# MobileNetV3-Large feature indices ending at strides 8, 16 and 32, and their channels
TAPS, TAP_CHANNELS = (6, 12, 15), (40, 112, 160)

# A few hundred of the 8400 x 10 (location, class) scores clear the 0.25 threshold on a
# synthetic scene; NMS then leaves tens of detections: a realistic load for decode and parity.
TARGETS = InitTargets(
    score_fraction=0.0025,
    score_std=1.5,
    box=ChannelTarget(mean=0.7, std=0.4),  # exp -> ~2 strides per side, spread x1.5
)

DETECTOR = ModelSpec(
    name="detector",
    family="detector",
    inputs=(TensorSpec("images", ("batch", 3, INPUT_SIZE, INPUT_SIZE)),),
    outputs=("boxes", "scores"),
    profile=ProfileRange(min=1, opt=4, max=8),
    preprocess=Preprocess(height=INPUT_SIZE, width=INPUT_SIZE, resize=ResizeMode.LETTERBOX,
                          mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pad_value=114.0),
    postprocess={"class_names": list(CLASS_NAMES), "strides": [8, 16, 32], "score_threshold": 0.25,
                 "iou_threshold": 0.45, "pre_nms_top_k": 3000, "max_detections": 100},
    description="YOLO-style anchor-free detector, MobileNetV3-Large + FPN, 640 px letterbox",
)


def init_images(spec: ModelSpec, family: str, count: int) -> list[torch.Tensor]:
    """Preprocessed synthetic images for the activation calibration (never the eval seed)."""
    assert spec.preprocess is not None
    return [torch_preprocess(img, spec.preprocess)[0] for _, img in generate(family, count, SEED_INIT)]


def build_detector(class_names: Sequence[str], *, spec: ModelSpec = DETECTOR, seed: int = SEED,
                   initialise_model: bool = True) -> DenseDetector:
    """The detector architecture for ``class_names`` (seeded; calibrated unless told not to)."""

    def build() -> DenseDetector:
        features = torchvision.models.mobilenet_v3_large(weights=None).features
        return DenseDetector(features, TAPS, TAP_CHANNELS, len(class_names))

    model = seeded(build, seed)
    if initialise_model:
        initialise(model, init_images(spec, "detector", INIT_IMAGES), TARGETS,
                   float(spec.postprocess["score_threshold"]))
    return model.eval()


@register(DETECTOR)
def detector(*, initialise: bool = True) -> DenseDetector:
    return build_detector(CLASS_NAMES, initialise_model=initialise)
