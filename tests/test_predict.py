"""stage=predict: one palette PNG per test id in the server layout, and the archive to upload."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval import TINY

from conftest import compose_config, make_seg_stage, make_segmenter, run_stage, segmenter_spec
from wsss.data.palette import voc_palette
from wsss.errors import MissingArtifactError
from wsss.pipeline.artifacts import Experiment, read_json
from wsss.stages.predict import RESULTS, write_archive


def test_predict_writes_server_layout_and_tar_gz(tmp_path: Path) -> None:
    from wsss.data.toy import generate
    from wsss.data.voc import VOCDataset

    root = generate(tmp_path / "toy", seed=0, num_train=2, num_val=2, num_test=4, size=48)
    runs = tmp_path / "runs"
    cfg = compose_config(
        [
            "stage=predict",
            "data=toy",
            f"data.root={root}",
            "data.generate=false",
            "logger=none",
            "trainer=cpu",
            "exp=p1",
        ],
        runs=runs,
    )
    exp = Experiment(runs / "p1", runs=runs)
    torch.manual_seed(0)
    make_seg_stage(cfg, make_segmenter(**TINY), segmenter_spec(**TINY))

    metrics = run_stage(cfg)
    test = VOCDataset(root, "test")
    assert not test.has_masks and len(test.ids) == 4
    folder = exp.stage_dir("predict") / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.png" for i in test.ids)
    for k, image_id in enumerate(test.ids):
        with Image.open(folder / f"{image_id}.png") as img:
            assert img.mode == "P"
            palette = np.array(img.getpalette()).reshape(-1, 3)
            assert np.array_equal(palette[:21], voc_palette()[:21])
            assert img.size[::-1] == test.image(k).shape[:2]  # original size
            assert np.array(img).max() <= 20
    archive = exp.stage_dir("predict") / "results.tar.gz"
    with tarfile.open(archive, "r:gz") as tar:
        names = sorted(tar.getnames())
        assert names == sorted(f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in test.ids)
        first = tar.extractfile(names[0]).read()
    assert first == (folder / Path(names[0]).name).read_bytes()
    assert metrics == read_json(exp.stage_dir("predict") / "metrics.json")
    assert (metrics["images"], metrics["written"], metrics["skipped"]) == (4, 4, 0)
    assert "miou" not in metrics  # the test split has no ground truth

    # a killed run resumes: it keeps what is there and makes a lost PNG again
    (folder / f"{test.ids[1]}.png").unlink()
    (exp.stage_dir("predict") / ".complete").unlink()
    again = run_stage(cfg)
    assert (again["written"], again["skipped"]) == (1, 3)
    assert (exp.stage_dir("predict") / ".complete").is_file()


def test_predict_on_a_split_with_ground_truth_reports_miou(tmp_path: Path) -> None:
    from wsss.data.toy import generate

    root = generate(tmp_path / "toy", seed=0, num_train=2, num_val=3, num_test=1, size=48)
    runs = tmp_path / "runs"
    cfg = compose_config(
        [
            "stage=predict",
            "data=toy",
            f"data.root={root}",
            "data.generate=false",
            "logger=none",
            "exp=p2",
            "predict.split=val",
        ],
        runs=runs,
    )
    make_seg_stage(cfg, make_segmenter(**TINY), segmenter_spec(**TINY))
    metrics = run_stage(cfg)
    assert metrics["images"] == 3 and 0.0 <= metrics["miou"] <= 1.0


def test_archive_refuses_missing_predictions(tmp_path: Path) -> None:
    (tmp_path / RESULTS).mkdir(parents=True)
    (tmp_path / RESULTS / "a.png").write_bytes(b"x")
    with pytest.raises(MissingArtifactError, match="1 predictions missing"):
        write_archive(tmp_path, ["a", "b"], tmp_path / "r.tar.gz")
    assert not (tmp_path / "r.tar.gz").exists()  # nothing half-written
