"""stage=adopt: the authors' files (and wsss's own) installed as a stage's artifact, then read downstream.

The release's classifier checkpoint (random weights in its layout) adopted through train.py gives, under
``stage=maps protocol=release``, the maps of the release's loop (``release_maps_reference``) on real VOC
images; the release's ``.npy`` maps adopted give the same pseudo labels as wsss's own maps; adopted
pseudo labels train the segmenter; an adopted segmenter is evaluated like a trained one. Every kind is
refused naming the first bad file.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from release_maps_reference import release_cls_maps, release_input, release_store

from conftest import TINY_TOY, compose_config, make_classifier, make_segmenter, run_stage, run_train
from wsss.data.palette import read_index_png, save_mask
from wsss.data.voc import VOCDataset
from wsss.errors import AdoptionError, ArtifactMismatchError, StageCompleteError, WeightsError
from wsss.models.release_formats import classifier_wsss_to_release
from wsss.pipeline.artifacts import Experiment, read_json
from wsss.stages.adopt import adopt

PICKED = (0, 1, 2, 3, 10)  # the real VOC train images test_release_maps uses (#10 has three classes)


@pytest.fixture(scope="module")
def voc_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VOC folder with ``PICKED`` train images (images, masks, saliency as ``saliency``; every list)."""
    src = shared_data / "voc_sample" / "VOCdevkit" / "VOC2012"
    root = tmp_path_factory.mktemp("voc")
    dst = root / "VOCdevkit" / "VOC2012"
    ids = (src / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    ids = [ids[i] for i in PICKED]
    for folder, target, suffix in (
        ("JPEGImages", "JPEGImages", ".jpg"),
        ("SegmentationClassAug", "SegmentationClassAug", ".png"),
        ("saliency_isnet_imgly", "saliency", ".png"),
    ):
        (dst / target).mkdir(parents=True)
        for image_id in ids:
            shutil.copy(src / folder / f"{image_id}{suffix}", dst / target / f"{image_id}{suffix}")
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split in ("train", "train_aug", "val"):
        (dst / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def release_args(voc_root: Path, runs: Path, exp: str) -> list[str]:
    return [
        "protocol=release",
        "data=voc",
        f"data.root={voc_root}",
        f"data.saliency_dir={voc_root / 'VOCdevkit' / 'VOC2012' / 'saliency'}",
        "backbone=tiny",
        "data.num_workers=0",
        "maps.batch_size=1",  # as the release runs (batched convolutions round differently)
        "logger=none",
        "print_config=false",
        "pseudo.source=cls",
        "pseudo.workers=1",
        f"paths.runs={runs}",
        f"exp={exp}",
    ]


def release_checkpoint(net: torch.nn.Module, path: Path) -> Path:
    """``net`` saved as the authors' ``best.pth``: ``{"model": state}``, release keys, ``module.`` prefix."""
    state = classifier_wsss_to_release(net.state_dict(), net.backbone.conv_indices)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 14}, path)
    return path


@pytest.fixture(scope="module")
def release_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_classifier("tiny", "learnable").eval()


@pytest.fixture(scope="module")
def adopted_release(voc_root: Path, release_net: torch.nn.Module, tmp_path_factory) -> dict:
    """The release checkpoint adopted as cls through train.py, then stage=maps through train.py."""
    base = tmp_path_factory.mktemp("adopt_release")
    checkpoint = release_checkpoint(release_net, base / "best.pth")
    runs = base / "runs"
    args = release_args(voc_root, runs, "rel")
    proc = run_train(["stage=adopt", "adopt.stage=cls", f"adopt.path={checkpoint}", *args])
    assert proc.returncode == 0, proc.stdout[-3000:]
    proc = run_train(["stage=maps", *args])
    assert proc.returncode == 0, proc.stdout[-3000:]
    return {"runs": runs, "args": args, "checkpoint": checkpoint, "exp": Experiment(runs / "rel", runs=runs)}


def test_the_release_checkpoint_adopted_through_train_py_gives_the_release_loop_s_maps(
    adopted_release: dict, voc_root: Path, release_net: torch.nn.Module
) -> None:
    exp: Experiment = adopted_release["exp"]
    voc = VOCDataset(voc_root, "train")
    values = differing = 0
    for i, image_id in enumerate(voc.ids):
        label = torch.from_numpy(voc.label(i))
        reference = release_store(release_cls_maps(release_net, release_input(voc.image(i)), label))
        present = np.flatnonzero(label.numpy())
        with np.load(exp.stage_dir("maps_cls") / f"{image_id}.npz") as data:
            assert data["classes"].tolist() == present.tolist()
            stored = data["maps"]
        assert stored.dtype == np.uint8 and stored.shape == (present.size, 320, 320)
        diff = np.abs(stored.astype(int) - reference[present].astype(int))
        assert diff.max() <= 1
        values += diff.size
        differing += int((diff > 0).sum())
    assert differing / values < 1e-4  # measured: 0 (batch 1, as the release runs)


def test_the_adopted_checkpoint_s_record_names_its_file_and_settings(adopted_release: dict) -> None:
    exp: Experiment = adopted_release["exp"]
    record = exp.record("cls")
    checkpoint: Path = adopted_release["checkpoint"]
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert record["external"] == {
        "kind": "classifier",
        "format": "release_classifier",
        "path": str(checkpoint),
        "sha256": sha,
    }
    assert record["config"]["external.sha256"] == sha and record["upstream"] == {}
    assert record["config"]["drs.mode"] == "learnable" and record["config"]["protocol"] == "release"
    maps = exp.record("maps_cls")
    assert maps["upstream"]["cls"]["identity"] == record["identity"]
    assert exp.metrics("cls") == {"format": "release_classifier", "tensors": 26}
    ckpt = torch.load(exp.stage_dir("cls") / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["network"]["backbone"]["_target_"] == "wsss.models.tiny.TinyBackbone"


def test_maps_of_an_adopted_learnable_classifier_are_refused_under_drs_fixed(adopted_release: dict) -> None:
    args = [a for a in adopted_release["args"] if not a.startswith("exp=")]
    proc = run_train(["stage=maps", "force=true", "drs=fixed", "exp=rel", *args], tracebacks=False)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "ArtifactMismatchError" in proc.stdout
    assert "cls: drs.mode: made with 'learnable', now 'fixed'" in proc.stdout
    assert f"was adopted from {adopted_release['checkpoint']} with settings that contradict" in proc.stdout
    assert "external.sha256" not in proc.stdout  # the file's own record is not a setting to change
    assert "adopt it again under them:" in proc.stdout
    assert (
        f"python train.py stage=adopt adopt.stage=cls adopt.path={adopted_release['checkpoint']}"
        in proc.stdout
    )


def test_adopting_over_an_artifact_needs_force(adopted_release: dict) -> None:
    cfg = compose_config(
        [
            "stage=adopt",
            "adopt.stage=cls",
            f"adopt.path={adopted_release['checkpoint']}",
            *adopted_release["args"],
        ]
    )
    with pytest.raises(StageCompleteError, match="already exists; adopting replaces it .* add force=true"):
        adopt(cfg)


def test_release_npy_maps_adopted_give_the_pseudo_labels_of_wsss_s_own_maps(
    adopted_release: dict, voc_root: Path, release_net: torch.nn.Module, tmp_path: Path
) -> None:
    """The release's files (dense uint8 20 x 320 x 320 ``np.uint8(M * 255)``) -> maps_cls -> pseudo."""
    voc = VOCDataset(voc_root, "train")
    npy = tmp_path / "npy"
    npy.mkdir()
    for i, image_id in enumerate(voc.ids):
        label = torch.from_numpy(voc.label(i))
        np.save(
            npy / f"{image_id}.npy",
            release_store(release_cls_maps(release_net, release_input(voc.image(i)), label)),
        )
    runs = adopted_release["runs"]
    args = [a for a in adopted_release["args"] if not a.startswith("exp=")]
    metrics = adopt(
        compose_config(["stage=adopt", "adopt.stage=maps_cls", f"adopt.path={npy}", "exp=npy", *args])
    )
    own = adopted_release["exp"]
    assert metrics["maps_cls/format"] == "release_npy" and metrics["maps_cls/images"] == len(voc.ids)
    assert metrics["maps_cls/miou"] == own.metrics("maps_cls")["miou"]  # the same seed evaluation
    mine = Experiment(runs / "npy", runs=runs)
    assert mine.record("maps_cls")["external"]["kind"] == "maps"
    for run_exp in ("npy", "rel"):
        run_stage(compose_config(["stage=pseudo", f"exp={run_exp}", *args]))
    for image_id in voc.ids:
        with (
            np.load(mine.stage_dir("maps_cls") / f"{image_id}.npz") as a,
            np.load(own.stage_dir("maps_cls") / f"{image_id}.npz") as b,
        ):
            assert np.array_equal(a["classes"], b["classes"]) and np.array_equal(a["maps"], b["maps"])
        adopted_label = read_index_png(mine.stage_dir("pseudo") / f"{image_id}.png")
        assert np.array_equal(adopted_label, read_index_png(own.stage_dir("pseudo") / f"{image_id}.png"))
    assert mine.metrics("pseudo")["miou"] == own.metrics("pseudo")["miou"]


def test_bad_release_maps_are_refused_naming_the_file(
    adopted_release: dict, voc_root: Path, tmp_path: Path
) -> None:
    voc = VOCDataset(voc_root, "train")
    args = [a for a in adopted_release["args"] if not a.startswith("exp=")]
    folder = tmp_path / "npy"
    folder.mkdir()
    for i, image_id in enumerate(voc.ids):
        maps = np.zeros((20, 320, 320), np.uint8)
        maps[np.flatnonzero(voc.label(i))] = 9
        np.save(folder / f"{image_id}.npy", maps)

    def refused(match: str) -> None:
        cfg = compose_config(
            ["stage=adopt", "adopt.stage=maps_cls", f"adopt.path={folder}", "exp=bad", *args]
        )
        with pytest.raises(AdoptionError, match=match):
            adopt(cfg)
        assert not (adopted_release["runs"] / "bad" / "maps").exists()  # nothing installed

    first, second = voc.ids[0], voc.ids[1]
    absent = int(np.flatnonzero(voc.label(1) == 0)[0])
    maps = np.load(folder / f"{second}.npy")
    maps[absent, 5, 5] = 1
    np.save(folder / f"{second}.npy", maps)
    refused(rf"{second}.npy: class {absent} is not in the image's label .* but its map is not 0")
    np.save(folder / f"{second}.npy", np.zeros((20, 321, 320), np.uint8))
    refused(rf"{second}.npy: maps of shape \(20, 321, 320\); expected \(20, 320, 320\)")
    (folder / f"{second}.npy").unlink()
    (folder / f"{first}.npy").unlink()
    refused(rf"has no {first}.npy or {first}.npz: every image of split 'train_aug'")


# ------------------------------------------------------------------------------------- toy: pseudo, seg

TOY = [*TINY_TOY, "pseudo.source=cls", "pseudo.workers=1", "seg.max_steps=2", "print_config=false"]


def toy_cfg(tmp_path: Path, *overrides: str):
    return compose_config([*TOY, *overrides], runs=tmp_path / "runs")


def test_pseudo_labels_adopted_train_the_segmenter(tmp_path: Path) -> None:
    cfg = toy_cfg(tmp_path, "exp=p", "stage=adopt", "adopt.stage=pseudo", f"adopt.path={tmp_path / 'labels'}")
    from wsss.data.toy import ensure_toy

    ensure_toy(cfg.data)
    train = VOCDataset(cfg.data.root, str(cfg.data.maps_split))
    labels = tmp_path / "labels"
    labels.mkdir()
    for i, image_id in enumerate(train.ids):  # index PNGs (mode L) and palette PNGs both
        mask = train.mask(i)
        if i % 2:
            save_mask(labels / f"{image_id}.png", mask)
        else:
            from PIL import Image

            Image.fromarray(mask, mode="L").save(labels / f"{image_id}.png")
    metrics = adopt(cfg)
    assert metrics["pseudo/images"] == len(train.ids) and metrics["pseudo/miou"] == 1.0  # the ground truth
    exp = Experiment(cfg.paths.exp_dir, runs=cfg.paths.runs)
    for i, image_id in enumerate(train.ids):
        assert np.array_equal(read_index_png(exp.stage_dir("pseudo") / f"{image_id}.png"), train.mask(i))
    seg = run_stage(toy_cfg(tmp_path, "exp=p", "stage=seg"))
    assert seg["steps"] == 2
    assert exp.record("seg")["upstream"]["pseudo"]["identity"] == exp.record("pseudo")["identity"]
    with pytest.raises(ArtifactMismatchError, match=r"pseudo: pseudo.alpha: made with 0.2, now 0.3"):
        run_stage(toy_cfg(tmp_path, "exp=p", "stage=seg", "pseudo.alpha=0.3", "force=true"))


def test_bad_pseudo_labels_are_refused_naming_the_file(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    cfg = toy_cfg(tmp_path, "exp=p", "stage=adopt", "adopt.stage=pseudo", f"adopt.path={labels}")
    from wsss.data.toy import ensure_toy

    ensure_toy(cfg.data)
    train = VOCDataset(cfg.data.root, str(cfg.data.maps_split))
    labels.mkdir()
    for i, image_id in enumerate(train.ids):
        save_mask(labels / f"{image_id}.png", train.mask(i))
    second = train.ids[1]
    bad = train.mask(1).copy()
    bad[0, 0] = 42
    save_mask(labels / f"{second}.png", bad)
    with pytest.raises(AdoptionError, match=rf"{second}.png: values \[42\] are not class ids 0..20 or 255"):
        adopt(cfg)
    save_mask(labels / f"{second}.png", train.mask(1)[:-1])
    with pytest.raises(AdoptionError, match=rf"{second}.png: pseudo label is 48x47 but its image is 48x48"):
        adopt(cfg)
    assert not (tmp_path / "runs" / "p" / "pseudo").exists()


def test_an_adopted_segmenter_is_evaluated_as_the_one_it_holds(tmp_path: Path) -> None:
    """A wsss segmenter file adopted as seg: stage=eval gives the numbers of the same network made by seg."""
    from conftest import make_seg_stage, segmenter_spec

    torch.manual_seed(3)
    toy = {"rates": [2, 4], "new_head": True}  # experiment=toy's segmenter
    model = make_segmenter("largefov_tiny_wide", **toy)
    trained = toy_cfg(tmp_path, "exp=made", "stage=eval")
    make_seg_stage(trained, model, segmenter_spec("largefov_tiny_wide", **toy))
    made = run_stage(trained)
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "seg.ckpt"
    )
    adopt(
        toy_cfg(tmp_path, "exp=ad", "stage=adopt", "adopt.stage=seg", f"adopt.path={tmp_path / 'seg.ckpt'}")
    )
    adopted = run_stage(toy_cfg(tmp_path, "exp=ad", "stage=eval"))
    assert adopted["miou"] == made["miou"] and adopted["pixel_accuracy"] == made["pixel_accuracy"]
    exp = Experiment(tmp_path / "runs" / "ad", runs=tmp_path / "runs")
    assert exp.record("seg")["external"]["format"] == "wsss_segmenter"
    assert exp.record("eval")["upstream"]["seg"]["identity"] == exp.record("seg")["identity"]


def test_segmenter_files_that_are_no_trained_segmenter_are_refused(tmp_path: Path) -> None:
    coco_init = tmp_path / "deeplabv1_resnet101-coco.pth"
    torch.save({"layer1.conv1.conv.weight": torch.zeros(64, 3, 7, 7)}, coco_init)
    cfg = toy_cfg(tmp_path, "exp=s", "stage=adopt", "adopt.stage=seg", f"adopt.path={coco_init}")
    with pytest.raises(AdoptionError, match="is the release's COCO init .* not a trained segmenter"):
        adopt(cfg)
    other = make_segmenter("aspp_tiny").state_dict()
    torch.save(other, tmp_path / "aspp.pth")
    cfg = toy_cfg(tmp_path, "exp=s", "stage=adopt", "adopt.stage=seg", f"adopt.path={tmp_path / 'aspp.pth'}")
    with pytest.raises(AdoptionError, match=r"does not fit segmenter=largefov_tiny"):
        adopt(cfg)


def test_adopt_names_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(AdoptionError, match=r"adopt.stage='eval'; name the stage .*: cls, refine, maps_cls"):
        adopt(toy_cfg(tmp_path, "stage=adopt", "adopt.stage=eval", f"adopt.path={tmp_path}"))
    with pytest.raises(AdoptionError, match=r"adopt.stage=cls takes a file \(classifier\)"):
        adopt(toy_cfg(tmp_path, "stage=adopt", "adopt.stage=cls", f"adopt.path={tmp_path}"))
    net = make_classifier("tiny", "fixed")
    torch.save(net.state_dict(), tmp_path / "fixed.pth")
    with pytest.raises(WeightsError, match="adopt.path=.* no DRS controller weights for this model"):
        adopt(toy_cfg(tmp_path, "stage=adopt", "adopt.stage=cls", f"adopt.path={tmp_path / 'fixed.pth'}"))


def test_an_adopted_classifier_is_skipped_by_a_pipeline_and_shared_through_the_store(tmp_path: Path) -> None:
    net = make_classifier("tiny", "learnable")
    torch.save(net.state_dict(), tmp_path / "cls.pth")
    for name in ("a", "b"):
        adopt(
            toy_cfg(
                tmp_path,
                f"exp={name}",
                "stage=adopt",
                "adopt.stage=cls",
                f"adopt.path={tmp_path / 'cls.pth'}",
            )
        )
    runs = tmp_path / "runs"
    a, b = (Experiment(runs / n, runs=runs) for n in ("a", "b"))
    assert a.stage_dir("cls").resolve() == b.stage_dir("cls").resolve()  # one store entry
    from wsss.pipeline.runner import check_plan, pipeline_names

    cfg = toy_cfg(tmp_path, "exp=a", "stage=pipeline", "pipeline.stages=[cls,maps_cls]")
    steps = check_plan(cfg, a, pipeline_names(cfg))
    assert [(s.name, s.action) for s in steps] == [("cls", "skip"), ("maps_cls", "run")]
    with pytest.raises(StageCompleteError, match="stage cls is already complete"):
        run_stage(toy_cfg(tmp_path, "exp=a", "stage=cls"))


# ------------------------------------------------------------------------------ the real release layouts


@pytest.mark.slow
def test_the_release_vgg16_best_pth_adopted_gives_the_release_loop_s_maps(
    shared_data: Path, tmp_path: Path
) -> None:
    """The listed VGG-16 learnable-DRS ``best.pth`` (random weights, ``features.N`` aliases and all), through
    train.py, on two VOC images (about a minute on one CPU thread)."""
    from release_listings import save
    from test_release_formats import release_file_state

    from conftest import copy_voc_sample
    from wsss.models.weights import load_classifier_weights

    state = release_file_state("drs_classifier_learnable")
    checkpoint = save(state, tmp_path / "best.pth", wrapper="model")
    copy_voc_sample(shared_data, tmp_path / "voc", train=2, val=1)
    runs = tmp_path / "runs"
    args = [*release_args(tmp_path / "voc", runs, "vgg"), "backbone=vgg16"]
    proc = run_train(["stage=adopt", "adopt.stage=cls", f"adopt.path={checkpoint}", *args], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    proc = run_train(["stage=maps", *args], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    net = make_classifier("vgg16", "learnable").eval()
    load_classifier_weights(net, checkpoint)
    voc = VOCDataset(tmp_path / "voc", "train_aug")
    folder = runs / "vgg" / "maps" / "cls"
    values = differing = 0
    for i, image_id in enumerate(voc.ids):
        label = torch.from_numpy(voc.label(i))
        reference = release_store(release_cls_maps(net, release_input(voc.image(i)), label))
        present = np.flatnonzero(label.numpy())
        with np.load(folder / f"{image_id}.npz") as data:
            stored = data["maps"]
        diff = np.abs(stored.astype(int) - reference[present].astype(int))
        assert stored.shape == (present.size, 320, 320) and diff.max() <= 1
        values, differing = values + diff.size, differing + int((diff > 0).sum())
    assert differing / values < 1e-4


@pytest.mark.slow
def test_the_release_deeplabv2_file_adopted_is_evaluated(shared_data: Path, tmp_path: Path) -> None:
    """The listed DeepLab-V2 ResNet-101 MSC ``checkpoint_final.pth`` (random weights) adopted as seg under
    protocol=release segmenter=aspp_r101, then stage=eval on one VOC val image."""
    from release_listings import random_state, save

    from conftest import copy_voc_sample
    from wsss.models.release_formats import deeplabv2_release_to_wsss

    state = random_state("deeplabv2_resnet101_msc", seed=0)
    checkpoint = save(state, tmp_path / "checkpoint_final.pth")
    copy_voc_sample(shared_data, tmp_path / "voc", train=1, val=1)
    runs = tmp_path / "runs"
    args = [*release_args(tmp_path / "voc", runs, "v2"), "segmenter=aspp_r101", "eval.figure_images=0"]
    proc = run_train(["stage=adopt", "adopt.stage=seg", f"adopt.path={checkpoint}", *args], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    ckpt = torch.load(runs / "v2" / "seg" / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["network"]["_target_"] == "wsss.models.deeplabv2.MultiScaleInputs"
    mapped, skipped = deeplabv2_release_to_wsss(state)
    assert not skipped
    for key, value in mapped.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(ckpt["state_dict"][f"model.base.{key}"], value), key
    proc = run_train(["stage=eval", *args], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    metrics = read_json(runs / "v2" / "eval" / "metrics.json")
    assert 0.0 <= metrics["miou"] <= 1.0
    (val_id,) = VOCDataset(tmp_path / "voc", "val").ids
    prediction = read_index_png(runs / "v2" / "eval" / "predictions" / f"{val_id}.png")
    assert prediction.shape == VOCDataset(tmp_path / "voc", "val").image_size(0)


def test_a_release_layout_refiner_is_adopted_as_refine(tmp_path: Path) -> None:
    """The refinement network (DRS-dagger) in the release layout -> refine/checkpoints/best.ckpt whose
    network (rebuilt from its own spec) computes what the file's weights compute."""
    from wsss.models.checkpoint import load_network

    torch.manual_seed(4)
    net = make_classifier("tiny", refiner=True, output_stride=4).eval()  # the toy recipe's backbone
    path = release_checkpoint(net, tmp_path / "refiner.pth")
    metrics = adopt(toy_cfg(tmp_path, "exp=r", "stage=adopt", "adopt.stage=refine", f"adopt.path={path}"))
    assert metrics == {"refine/format": "release_classifier", "refine/tensors": len(net.state_dict())}
    rebuilt = load_network(tmp_path / "runs" / "r" / "refine" / "checkpoints" / "best.ckpt")
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))


def test_wsss_npz_maps_are_adopted_as_they_are(adopted_release: dict, voc_root: Path) -> None:
    """A maps folder wsss made (npz, with its bookkeeping files) adopted into another experiment: the same
    files; the folder's hash covers the maps files only."""
    from wsss.stages.adopt import folder_sha256

    own: Experiment = adopted_release["exp"]
    args = [a for a in adopted_release["args"] if not a.startswith("exp=")]
    folder = own.stage_dir("maps_cls").resolve()
    metrics = adopt(
        compose_config(["stage=adopt", "adopt.stage=maps_cls", f"adopt.path={folder}", "exp=npz", *args])
    )
    assert metrics["maps_cls/format"] == "wsss_npz"
    mine = Experiment(adopted_release["runs"] / "npz", runs=adopted_release["runs"])
    for image_id in VOCDataset(voc_root, "train").ids:
        assert (mine.stage_dir("maps_cls") / f"{image_id}.npz").read_bytes() == (
            folder / f"{image_id}.npz"
        ).read_bytes()
    assert mine.record("maps_cls")["external"]["sha256"] == folder_sha256(sorted(folder.glob("*.npz")))
