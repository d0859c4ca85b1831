"""``facepose``: an img2pose-style dense face detector with a 6DoF pose head, 640x640.

The dense detector of ``batchforge.export.zoo.dense`` on a MobileNetV3-Small backbone with one
class ("face") and a pose branch: per anchor a rotation vector and a local translation code
(dx, dy, log face width). ``batchforge.runtime.post.facepose`` turns the code into a global
6DoF pose with the original image's camera (img2pose's local-to-global conversion) and
projects the generated 68-point 3D face reference through it.
"""

from __future__ import annotations

import torchvision

from batchforge.export.registry import register
from batchforge.export.zoo.dense import ChannelTarget, DenseDetector, InitTargets, initialise
from batchforge.export.zoo.detector import init_images
from batchforge.export.zoo.init import seeded
from batchforge.runtime.spec import ModelSpec, Preprocess, ProfileRange, ResizeMode, TensorSpec

INPUT_SIZE = 640
INIT_IMAGES = 8
SEED = 32
# MobileNetV3-Small feature indices ending at strides 8, 16 and 32, and their channels
TAPS, TAP_CHANNELS = (3, 8, 11), (24, 48, 96)

TARGETS = InitTargets(
    score_fraction=0.012,  # ~100 of 8400 anchors over the threshold; NMS leaves tens of faces
    score_std=1.5,
    box=ChannelTarget(mean=0.7, std=0.4),
    pose=(
        ChannelTarget(0.0, 0.15),  # rx: pitch, radians (~9 degrees spread)
        ChannelTarget(0.0, 0.3),  # ry: yaw
        ChannelTarget(0.0, 0.1),  # rz: roll
        ChannelTarget(0.0, 0.2),  # dx: face centre offset from the anchor, strides
        ChannelTarget(0.0, 0.2),  # dy
        ChannelTarget(1.2, 0.3),  # log face width in strides: ~3.3 strides
    ),
)

FACEPOSE = ModelSpec(
    name="facepose",
    family="facepose",
    inputs=(TensorSpec("images", ("batch", 3, INPUT_SIZE, INPUT_SIZE)),),
    outputs=("boxes", "scores", "pose"),
    profile=ProfileRange(min=1, opt=4, max=8),
    preprocess=Preprocess(height=INPUT_SIZE, width=INPUT_SIZE, resize=ResizeMode.LETTERBOX,
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pad_value=0.0),
    postprocess={"class_names": ["face"], "strides": [8, 16, 32], "score_threshold": 0.3,
                 "iou_threshold": 0.4, "pre_nms_top_k": 2000, "max_detections": 50,
                 "focal_scale": 1.0},
    description="img2pose-style face detector + 6DoF pose, MobileNetV3-Small + FPN, 640 px letterbox",
)


@register(FACEPOSE)
def facepose(*, initialise: bool = True) -> DenseDetector:
    def build() -> DenseDetector:
        features = torchvision.models.mobilenet_v3_small(weights=None).features
        return DenseDetector(features, TAPS, TAP_CHANNELS, 1, pose=True)

    model = seeded(build, SEED)
    if initialise:
        _calibrate(model)
    return model.eval()


def _calibrate(model: DenseDetector) -> None:
    initialise(model, init_images(FACEPOSE, "facepose", INIT_IMAGES), TARGETS,
               float(FACEPOSE.postprocess["score_threshold"]))
