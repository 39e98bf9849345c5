"""No hard-coded VOC class count in src/: every 20 / 21 that could be a class count is listed here with
the reason it is not one, or is only a default the stages override with ``data.num_classes`` (the
3-class folder and COCO pipelines in test_folder_data / test_coco show the config's count flowing)."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "wsss"

PATTERNS = (
    re.compile(r"\b(NUM_CLASSES|SEG_CLASSES|VOC_CLASSES)\b"),  # the VOC constants
    re.compile(r"(num_classes|seg_classes|classes)\b[^=\n]*=\s*2[01]\b"),  # a literal count
    re.compile(r"\b(range|choice|minlength=|zeros|ones|empty)\(?\s*2[01]\b"),  # arrays of 20 / 21
    re.compile(r"(names|classes)\w*\[\s*:\s*2[01]\s*\]|\(\s*2[01]\s*,\s*[A-Za-z]"),  # slices, shapes
)

ALLOWED: dict[str, str] = {
    # the one home of VOC's names and the fallback of a dataset without classes.txt
    "constants.py": "definitions",
    "data/voc.py": "VOC's classes when the dataset has no classes.txt; defaults of its helpers",
    "data/palette.py": "re-exports VOC_CLASSES for callers that name VOC classes",
    "method/metrics.py": "VOC's names when no names are given (seg_class_names); signature defaults",
    "method/seed_labels.py": "signature defaults (the maps stage passes the dataset's count); range(20) = 20 thresholds",
    "stages/maps.py": "fallback for a ground-truth object without num_classes",
    "stages/maps_writer.py": "signature default; write_maps passes the dataset's count",
    "stages/pseudo_rules.py": "LabelJob default; the pseudo stage passes data.num_classes",
    "data/maps_io.py": "signature defaults; readers pass the dataset's count",
    "data/toy.py": "the generated toy data has VOC's 20 classes by design",
    "bench/synthetic.py": "synthetic VOC-like benchmark data",
    "tasks/classification.py": "constructor default; stage cls passes data.num_classes",
    "tasks/segmentation.py": "constructor default; stage seg passes data.seg_classes",
    "models/classifier.py": "constructor default; conf/model/classifier.yaml passes ${data.num_classes}",
    "models/networks.py": "classifier_from_files default (tests, benchmarks)",
    "models/deeplab.py": "constructor default; conf/segmenter/*.yaml pass ${data.seg_classes}",
    "models/deeplabv2.py": "constructor defaults; the release's 21-class DeepLab-V2",
    "models/deeplabv3plus.py": "constructor defaults; conf/segmenter passes ${data.seg_classes}",
}


def test_no_hard_coded_voc_class_count_outside_the_listed_defaults() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if any(p.search(code) for p in PATTERNS) and rel not in ALLOWED:
                found.append(f"src/wsss/{rel}:{n}: {line.strip()}")
    assert not found, "hard-coded VOC class counts (route them through data.num_classes):\n" + "\n".join(
        found
    )


def test_the_listed_files_exist() -> None:
    """The allowlist stays honest: every file it names is still there."""
    assert [f for f in ALLOWED if not (SRC / f).is_file()] == []
