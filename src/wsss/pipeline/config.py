"""Config helpers: custom resolvers, validation of values up front, and the rank-0 config printout.

Nothing here imports torch: a bad value or a broken plan is reported in about a second.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsss.constants import DRS_LAYERS, DRS_MODES
from wsss.ddp.scheduler import slurm_job_id
from wsss.errors import ConfigError, UnknownKeyError, UnsupportedLaunchError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The Hydra configs, shipped inside the package (what ``wsss`` and ``train.py`` compose)."""

MAP_SOURCES = ("cls", "refine")

__all__ = [
    "ConfigError",
    "check_accelerator",
    "check_added_keys",
    "compose",
    "print_config",
    "register_resolvers",
    "run_id",
    "validate",
]


_RUN_IDS_MADE = itertools.count()


def run_id() -> str:
    """A unique experiment name: time, process id, a per-process counter and a random suffix.

    Stored in ``$WSSS_RUN_ID`` on first use, so DDP ranks that Lightning starts by re-executing
    the script (they inherit the environment) resolve the same folder. Under SLURM it is
    ``slurm-<job id>`` (``<array job>_<task>`` for an array task): a requeued job keeps its id, so it
    finds and resumes its own experiment (``wsss.tasks.preemption``).
    """
    if "WSSS_RUN_ID" not in os.environ and os.environ.get("SLURM_JOB_ID"):
        os.environ["WSSS_RUN_ID"] = f"slurm-{slurm_job_id()}"
    if "WSSS_RUN_ID" not in os.environ:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        suffix = f"{next(_RUN_IDS_MADE):x}{secrets.token_hex(3)}"
        os.environ["WSSS_RUN_ID"] = f"{stamp}_{os.getpid()}_{suffix}"
    return os.environ["WSSS_RUN_ID"]


def count_lines(path: str, offset: int = 0) -> int:
    """``${wsss_lines:<file>}``: the non-empty lines of a file (+ ``offset``), e.g. the class names of a
    dataset's ``classes.txt`` (``data=folder``: ``1`` more counts the background)."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"{file} not found: data=folder reads its class names there; make the dataset with "
            "`python -m wsss.data.folder ... --out <data.root>` or set data.num_classes / data.seg_classes"
        )
    return sum(1 for line in file.read_text().splitlines() if line.strip()) + int(offset)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("wsss_run_id"):
        OmegaConf.register_new_resolver("wsss_run_id", run_id, use_cache=True)
    if not OmegaConf.has_resolver("wsss_lines"):
        OmegaConf.register_new_resolver("wsss_lines", count_lines)
    if not OmegaConf.has_resolver("wsss_dirname"):
        OmegaConf.register_new_resolver("wsss_dirname", job_dirname)


def compose(overrides: Sequence[str] = (), config_dir: str | Path = CONF_DIR) -> DictConfig:
    """The config ``train.py <overrides>`` runs with (the ``hydra`` node included and made current, so
    ``${hydra:...}`` resolves), composed without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _check(value: object, allowed: Sequence[object], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not supported; choose one of: {', '.join(map(str, allowed))}")


def _number(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number") from None


def _whole(cfg: DictConfig, key: str, minimum: int = 1, allow: tuple[int, ...] = ()) -> None:
    """``key`` must be a whole number >= ``minimum`` (or one of ``allow``, e.g. -1 = no limit)."""
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be a whole number >= {minimum}")
    if value < minimum and value not in allow:
        extra = f" ({', '.join(map(str, allow))} = no limit)" if allow else ""
        raise ConfigError(f"{key}={value} must be >= {minimum}{extra}: a run of no training makes no network")


def _inside(child: str, parent: str) -> bool:
    child_abs, parent_abs = os.path.abspath(child), os.path.abspath(parent)
    return child_abs != parent_abs and os.path.commonpath([child_abs, parent_abs]) == parent_abs


def validate(cfg: DictConfig) -> None:
    """Reject bad values early, naming the key and the allowed choices."""
    _check(cfg.protocol, ("paper", "release"), "protocol")
    _check(cfg.drs.mode, DRS_MODES, "drs.mode")
    placement = cfg.drs.placement
    if not OmegaConf.is_list(placement):
        raise ConfigError(
            f"drs.placement={placement!r} must be a list of blocks, e.g. drs.placement=[{placement}] "
            f"or drs.placement=[layer4,layer5,layer6]; blocks: {list(DRS_LAYERS)}"
        )
    bad_layers = [layer for layer in placement if layer not in DRS_LAYERS]
    if bad_layers:
        raise ConfigError(
            f"drs.placement has unknown layers {bad_layers}; use a list drawn from {list(DRS_LAYERS)}"
        )
    if not 0.0 < _number(cfg, "drs.delta") <= 1.0:
        raise ConfigError(f"drs.delta={cfg.drs.delta} must be in (0, 1]")
    _check(cfg.maps.source, MAP_SOURCES, "maps.source")
    _check(cfg.cls.optimizer, list(cfg.cls.get("optimizers") or {}), "cls.optimizer")
    if not 1 <= int(cfg.data.num_classes) <= 254:
        raise ConfigError(
            f"data.num_classes={cfg.data.num_classes}: give the number of foreground classes, 1..254 "
            "(VOC and the toy data: 20; data=coco: 80; data=folder: the lines of its classes.txt)"
        )
    if int(cfg.data.seg_classes) != int(cfg.data.num_classes) + 1:
        raise ConfigError(
            f"data.seg_classes={cfg.data.seg_classes} must be data.num_classes + 1 (background)"
        )
    parts = str(cfg.exp).replace("\\", "/").split("/")
    if ".." in parts or str(cfg.exp).startswith("/"):
        raise ConfigError(f"exp={cfg.exp!r} must be a folder name under paths.runs (no '..', not absolute)")
    if not _inside(str(cfg.paths.exp_dir), str(cfg.paths.runs)):
        raise ConfigError(
            f"paths.exp_dir={cfg.paths.exp_dir} is not inside paths.runs={cfg.paths.runs}: wsss writes only "
            "under paths.runs (and paths.data); choose the folder with exp=<name> and leave paths.exp_dir alone"
        )
    _whole(cfg, "cls.epochs")
    _whole(cfg, "refine.epochs")
    _whole(cfg, "seg.max_steps")
    if OmegaConf.select(cfg, "trainer.max_epochs") is not None:
        _whole(cfg, "trainer.max_epochs")
    if OmegaConf.select(cfg, "trainer.max_steps") is not None:
        _whole(cfg, "trainer.max_steps", allow=(-1,))


RESUME_WORDS = ("ckpt_path", "ckpt", "resume_from_checkpoint", "checkpoint", "resume_from")
"""Keys users try for resuming; wsss resumes by itself (``resume=true``)."""


def _dotted_keys(node: object, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        out = []
        for key, value in node.items():
            out += [f"{prefix}{key}", *_dotted_keys(value, f"{prefix}{key}.")]
        return out
    return []


def _is_group(key: str, config_dirs: Sequence[str]) -> bool:
    from pathlib import Path

    return "/" in key or any((Path(d) / key).is_dir() for d in config_dirs)


def _passes_through(cfg: DictConfig, key: str) -> bool:
    """Whether a new ``key`` lands in a node whose keys go straight to a constructor (which checks them):
    ``trainer.*`` (Trainer arguments, checked by ``wsss.tasks.trainer.build_trainer``) or a ``_target_``
    node, or is a ``_target_`` node itself (``+cls.optimizers.adamw={_target_: ...}``)."""
    parts = key.split(".")
    if parts[0] in ("trainer", "hydra"):
        return True
    node = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if isinstance(node, DictConfig) and "_target_" in node:
        return True
    for end in range(len(parts) - 1, 0, -1):
        parent = OmegaConf.select(cfg, ".".join(parts[:end]), default=None, throw_on_missing=False)
        if isinstance(parent, DictConfig) and "_target_" in parent:
            return True
    return False


def check_added_keys(cfg: DictConfig, overrides: Sequence[str], config_dirs: Sequence[str] = ()) -> None:
    """Refuse ``+key=value`` overrides that add a key the config does not have (a typo such as
    ``+cls.epoch=3`` would otherwise be silently ignored), naming the closest existing keys.

    Hydra refuses ``+key`` on a key that exists, so every ``+key`` it accepted is new. Allowed: config
    group choices (``+experiment=toy``), Hydra's own keys, keys under ``trainer`` and ``_target_`` nodes
    (their constructor checks them), and ``++key=value`` (adding a key on purpose).
    """
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser

    added = [o for o in OverridesParser.create().parse_overrides(list(overrides)) if o.is_add()]
    added = [o for o in added if not _is_group(o.key_or_group, config_dirs)]
    added = [o for o in added if not _passes_through(cfg, o.key_or_group)]
    if not added:
        return
    job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=False)
    new = {o.key_or_group for o in added}
    known = [k for k in _dotted_keys(job) if k not in new]
    lines = []
    for o in added:
        key = o.key_or_group
        if key.split(".")[-1] in RESUME_WORDS:
            hint = (
                "wsss resumes by itself: a stage folder holding an unfinished run with the same settings "
                "continues from its checkpoints/last.ckpt; resume=false starts it over"
            )
        else:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
            hint = f"did you mean {' or '.join(close)}?" if close else "no similar key exists"
        lines.append(f"  {o.input_line}: the config has no key {key!r}; {hint}")
    raise UnknownKeyError(
        "unknown key(s) added with '+' (a typo is otherwise silently ignored):\n"
        + "\n".join(lines)
        + "\nSet an existing key without '+' (key=value); add a new key on purpose with ++key=value."
    )


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU accelerator needs a usable CUDA GPU here (checked before any work; imports torch only then)."""
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    fix = (
        "Run on the CPU with trainer=cpu (one process) or trainer=ddp_sim (DDP with CPU processes), or "
        "install the GPU build on a GPU machine (make install picks requirements/gpu.lock there)"
    )
    if available == 0:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UnsupportedLaunchError(
            f"trainer.accelerator={accelerator} (trainer=gpu / trainer=ddp) but this machine has no usable "
            f"CUDA GPU (torch {torch.__version__}, {build}). {fix}"
        )
    devices = OmegaConf.select(cfg, "trainer.devices")
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > available:
        raise UnsupportedLaunchError(
            f"trainer.devices={devices} but this machine has {available} CUDA GPU(s); set "
            f"trainer.devices={available} (or fewer)"
        )


def _is_rank_zero() -> bool:
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def print_config(cfg: DictConfig) -> None:
    """Print the composed config as a tree (rank 0 only)."""
    if not _is_rank_zero():
        return
    from rich import print as rprint
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, node in cfg.items():
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else f"{node}\n"
        tree.add(str(key)).add(Syntax(text, "yaml", theme="ansi_dark"))
    rprint(tree)


SWEEP_KEYS_FIRST = ("drs", "seed", "segmenter", "pseudo.source", "protocol", "backbone")
"""Keys a sweep usually varies: they lead a job's folder name, so a shortened name keeps them."""


def job_dirname(override_dirname: str, limit: int = 96) -> str:
    """A job's overrides as one folder name: the usual sweep keys first, no path separators, long names
    shortened with a hash of the whole."""
    import hashlib

    parts = override_dirname.split(",") if override_dirname else []
    parts.sort(key=lambda p: (not p.split("=", 1)[0].startswith(SWEEP_KEYS_FIRST), p))
    name = ",".join(parts).replace("/", "%") or "default"
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}~{digest}"
