"""The fast path's switches: trainer=gpu's settings, channels_last and compile of every training stage,
and the CPU allocator setting of the stages' Trainer (their speed is measured by bench/, not here)."""

from __future__ import annotations

import pytest
import torch

from wsss.pipeline.config import compose


def test_trainer_gpu_turns_on_bf16_cudnn_autotuning_channels_last_and_a_fed_loader():
    cfg = compose(["trainer=gpu", "experiment=paper_vgg16"])
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("gpu", 1, "bf16-mixed")
    assert cfg.trainer.benchmark is True
    assert (cfg.data.num_workers, cfg.data.pin_memory, cfg.data.persistent_workers) == (8, True, True)
    assert cfg.cls.channels_last and cfg.refine.channels_last and cfg.seg.channels_last
    assert not (cfg.cls.compile or cfg.refine.compile or cfg.seg.compile)  # opt-in: minutes of compiling
    assert cfg.trainer.log_every_n_steps == 10  # the rest of trainer/default.yaml is kept


def test_without_trainer_gpu_nothing_changes():
    cfg = compose(["experiment=toy"])
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    assert "benchmark" not in cfg.trainer
    assert cfg.data.num_workers == 0
    plain = compose(["trainer=cpu"])
    assert not (plain.cls.channels_last or plain.refine.channels_last or plain.seg.channels_last)
    # the toy recipe turns channels_last on itself (faster on the CPU too, same results up to rounding)
    assert cfg.cls.channels_last and cfg.refine.channels_last and cfg.seg.channels_last


@pytest.mark.parametrize("stage", ["refine", "seg"])
def test_channels_last_keeps_the_outputs_and_compile_wraps_the_network(stage):
    from wsss.stages.refine import build_task as build_refine
    from wsss.stages.seg import build_task as build_seg

    build = build_refine if stage == "refine" else build_seg
    base = ["experiment=toy", "logger=none"]
    torch.manual_seed(0)
    plain = build(compose([*base, f"{stage}.channels_last=false"]))
    torch.manual_seed(0)
    fast = build(compose([*base, f"{stage}.channels_last=true", f"{stage}.compile=true"]))
    assert fast.channels_last and not plain.channels_last
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.model._compiled_call_impl is not None and plain.model._compiled_call_impl is None
    fast.model._compiled_call_impl = None  # compare the eager network (compiling takes a while on CPU)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), plain.eval()(x), rtol=1e-4, atol=1e-5)
    assert list(fast.model.state_dict()) == list(plain.model.state_dict())  # checkpoint keys unchanged


def test_the_stages_trainer_keeps_freed_memory_on_the_cpu(tmp_path, monkeypatch):
    import wsss.tasks.memory
    from wsss.tasks.trainer import build_trainer

    calls = []
    monkeypatch.setattr(wsss.tasks.trainer, "retain_freed_memory", lambda *a, **k: calls.append(a) or True)
    cfg = compose(["experiment=toy", "logger=none"])
    build_trainer(cfg, "cls", tmp_path, checkpoint=False)
    assert calls == [()]
