"""Constants shared across wsss, each defined once."""

from __future__ import annotations

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""RGB mean in [0, 1] units: the input normalisation of torchvision-style ImageNet networks."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR: tuple[float, float, float] = (104.008, 116.669, 122.675)
"""BGR mean in 0-255 units that caffe-trained DeepLab networks subtract (no std)."""

IGNORE_INDEX = 255
"""Label value of pixels that are not scored (VOC boundaries, uncertain pseudo-label pixels)."""

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""The 20 foreground classes in VOC order (class id = index + 1; 0 is background)."""
NUM_CLASSES = len(VOC_CLASSES)
SEG_CLASSES: tuple[str, ...] = ("background", *VOC_CLASSES)
"""The 21 segmentation classes (background first)."""

DRS_LAYERS: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4", "layer5", "layer6")
"""Blocks DRS can be placed on: the five backbone blocks and the classifier head (layer6)."""
DRS_MODES: tuple[str, ...] = ("learnable", "fixed", "off")

COMPLETE = ".complete"
"""Marker file of a finished stage folder (or store entry): only folders holding it are ever read."""
METRICS = "metrics.json"
"""A stage folder's flat metrics."""
RECORD = "identity.json"
"""A stage folder's identity record: defining settings + upstream chain (``wsss.pipeline.provenance``)."""
TMP_PREFIX = ".tmp-"
"""Name prefix of files being written (``wsss.pipeline.artifacts.atomic_path``); never read as a result."""
