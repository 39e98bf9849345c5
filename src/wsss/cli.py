"""The ``wsss`` command (and ``train.py``): compose the Hydra config, then run one stage or a pipeline.

wsss stage=cls experiment=toy exp=demo                 # = python train.py stage=cls experiment=toy exp=demo
wsss stage=pipeline experiment=paper_vgg16 data=voc data.root=/data/voc
wsss -m experiment=toy drs.delta=0.4,0.55,0.7          # a sweep (see wsss/conf/sweep/)
wsss demo                                              # = python -m wsss.experiments.demo (make demo)
wsss --help                                            # stages, recipes, example commands

The configs ship inside the package (``wsss/conf``, ``wsss.pipeline.config.CONF_DIR``). Errors a user causes and
can fix (``wsss.errors.WsssError``: config, data, missing upstream, weights, launch; Hydra's own config
errors) print as one block without a traceback and exit with code 2; ``HYDRA_FULL_ERROR=1`` or
``debug_errors=true`` shows the traceback. Anything else (a TypeError inside a constructor included) is a
crash: its traceback, a line saying it is a bug in wsss to report, exit 1.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from wsss.data.verify import verify_for_stages
from wsss.ddp import prepare_job
from wsss.errors import PREEMPTED_EXIT, ConfigError, Preempted, WsssError
from wsss.experiments.report import record_job
from wsss.pipeline.config import (
    CONF_DIR,
    check_accelerator,
    check_added_keys,
    print_config,
    register_resolvers,
    validate,
)
from wsss.pipeline.logs import single_handlers
from wsss.pipeline.runner import (
    check_plan,
    experiment,
    finish_wandb,
    pipeline_names,
    run_stages,
)

register_resolvers()
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
log = logging.getLogger("wsss")

USER_ERROR_EXIT = 2
CRASH_EXIT = 1
TRACEBACKS = "WSSS_TRACEBACKS"
"""Set by the first train.py process: whether the user asked for tracebacks (inherited by DDP ranks)."""


class MetricNotFoundError(WsssError, KeyError):
    """``optimized_metric`` names a metric the run did not produce."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def task(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured stage(s) and return their metrics (``<stage>/<key>``)."""

    prepare_job(cfg)  # first: it resets state (DDP variables, run id) left by a previous sweep job
    try:
        preflight(cfg)
        from wsss.tasks.preemption import install  # torch/Lightning: only once the plan holds

        install(cfg)  # under SLURM: a checkpoint and a requeue at the scheduler's signal
        single_handlers()  # the plan holds, Lightning may load: one line per event under Hydra's logging
        if cfg.stage == "adopt":  # not a stage of the pipeline: it installs another's artifact
            from wsss.stages.adopt import adopt  # torch: only for stage=adopt

            metrics = adopt(cfg)
        else:
            metrics = run_stages(cfg)
        _record_job(cfg, metrics)
        return metrics
    except BaseException as err:
        _record_job(cfg, None, err)  # a sweep's report lists the failed job with its error
        raise
    finally:
        if "torch" in sys.modules:  # nothing to close when the plan check stopped the job before any work
            from wsss.ddp.sync import end_job  # torch: only when torch was loaded

            finish_wandb()
            end_job()
        log.info("experiment folder: %s", cfg.paths.exp_dir)


def preflight(cfg: DictConfig) -> None:
    """Everything checked before any work: values, ``+key`` typos, the accelerator, the plan of stages,
    then (cached) every data split the stages that will run read."""

    validate(cfg)
    _check_added_keys(cfg)
    if cfg.stage == "adopt":  # no plan: adoption checks its own input (wsss.stages.adopt)
        check_accelerator(cfg)
        return
    check_optimized_metric(cfg)
    check_accelerator(cfg)
    if cfg.get("print_config"):
        print_config(cfg)
    _check_plan_and_data(cfg)


def _check_added_keys(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    check_added_keys(cfg, overrides, [s.path for s in hc.runtime.config_sources if s.schema == "file"])
    added = [o.lstrip("+").split("=", 1)[0] for o in overrides if o.startswith("+")]
    trainer_keys = [k.split(".", 1)[1] for k in added if k.startswith("trainer.")]
    if trainer_keys:  # new Trainer arguments: check them now, not after the first stage has started
        from wsss.tasks.trainer import check_trainer_arguments  # Lightning: only for +trainer.* keys

        check_trainer_arguments(trainer_keys)


def _check_plan_and_data(cfg: DictConfig) -> None:
    """The data's content fingerprints (cached), the plan (seconds, no torch), then every data split the
    stages that will run read (cached)."""

    names = pipeline_names(cfg)
    check_recipe(cfg, names)  # before the toy data is generated for a command that is refused
    steps = check_plan(cfg, experiment(cfg), names)  # names the data by content first (data.content_from)
    running = [s.name for s in steps if s.action in ("run", "resume")]
    verify_for_stages(cfg, running)
    from wsss.models.config_checks import check_networks  # torch: only once the plan holds
    from wsss.tasks.build import check_tasks  # torch and lightning, likewise

    check_networks(cfg, running)
    check_tasks(cfg, running)


TRAINING_STAGES = ("cls", "refine", "seg")
"""Stages that train a network: on the toy data they need a recipe (``experiment=``)."""


def check_recipe(cfg: DictConfig, names: list[str]) -> None:
    """Training on the toy data needs a recipe (``experiment=``): the root config alone is the paper's
    VGG-16 schedule (meant for VOC), which on the 96 px toy images trains a random VGG-16 for 15 epochs."""
    if not HydraConfig.initialized() or HydraConfig.get().runtime.choices.get("experiment") is not None:
        return
    training = [name for name in names if name in TRAINING_STAGES]
    if training and str(cfg.data.name).startswith("toy"):
        recipes = ", ".join(sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
        raise ConfigError(
            f"this command trains {', '.join(training)} on the toy data but names no recipe: add experiment=<name> "
            f"(recipes: {recipes}). experiment=toy runs on CPU in minutes on the built-in toy data; "
            "experiment=paper_vgg16 is the paper's VGG-16 on VOC (data=voc data.root=... "
            "backbone.weights=...). Example: wsss stage=pipeline experiment=toy"
        )


def _record_job(cfg: DictConfig, metrics: dict[str, Any] | None, error: BaseException | None = None) -> None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        record_job(HydraConfig.get().runtime.output_dir, cfg, metrics, error)


def check_optimized_metric(cfg: DictConfig) -> None:
    """Before any work: ``optimized_metric`` must come from a stage this run makes."""

    name = cfg.get("optimized_metric")
    stages = pipeline_names(cfg)
    if name and str(name).split("/", 1)[0] not in stages:
        raise ConfigError(
            f"optimized_metric={name!r} comes from a stage this run does not make (stages: {', '.join(stages)}); "
            "add that stage to pipeline.stages or set optimized_metric=null"
        )


def optimized_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value a sweeper optimises; fails loudly when the name is not among the run's metrics."""
    if not name:
        return None
    if name not in metrics:
        available = ", ".join(sorted(metrics)) or "(none)"
        raise MetricNotFoundError(
            f"optimized_metric={name!r} was not produced by this run. Available metrics: {available}"
        )
    value = float(metrics[name])
    return value if math.isfinite(value) else float("nan")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    metrics = task(cfg)
    return optimized_value(metrics, cfg.get("optimized_metric"))


# --- errors: one block for what the user can fix, the traceback for bugs -------------------------------


def user_error(err: BaseException) -> tuple[str, str] | None:
    """(kind, message) when ``err`` is an error the user caused and can fix; None for a bug."""
    from hydra.errors import (
        ConfigCompositionException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    if isinstance(err, WsssError):
        return type(err).__name__, _strip_worker_traceback(str(err), err)
    if isinstance(err, InstantiationException):
        cause = err.__cause__
        if isinstance(cause, WsssError):  # only a wsss error inside a constructor is the user's
            head = str(err).splitlines()[0].rstrip(":")  # "Error in call to target '...'"
            return type(cause).__name__, f"{head}:\n{_strip_worker_traceback(str(cause), cause)}"
        return None
    if isinstance(err, MissingConfigException | OverrideParseException | ConfigCompositionException):
        text = str(err)
        if err.__cause__ is not None and str(err.__cause__) not in text:
            text += "\n" + str(err.__cause__)
        if text.startswith("Could not override"):
            text += (
                "\nThe key does not exist: check its spelling (`python train.py --cfg job` prints every key). "
                "'+key=value' adds a new key and is refused for keys wsss does not read."
            )
        return type(err).__name__, text
    if isinstance(err, InterpolationResolutionError | MissingMandatoryValue):
        return type(err).__name__, str(err)
    import yaml

    if isinstance(err, yaml.YAMLError):  # a config file (the user's own, or an edited one) does not parse
        return (
            "ConfigFileError",
            f"a config file is not valid YAML: {err}\nFix that file at the line named above.",
        )
    return None


def _strip_worker_traceback(text: str, err: BaseException) -> str:
    """The original message of an error re-raised from a DataLoader worker (which prepends the worker's
    traceback to it)."""
    if "Original Traceback (most recent call last)" not in text:
        return text
    marker = f"{type(err).__module__}.{type(err).__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker) :].strip() if at >= 0 else text


def format_error(kind: str, message: str) -> str:
    """The one block a user error prints."""
    body = "\n".join(f"  {line}" for line in message.strip().splitlines())
    return (
        f"\nError ({kind}):\n{body}\n"
        "(this is a problem with the command, config, data or files, not a crash of wsss; "
        "HYDRA_FULL_ERROR=1 or debug_errors=true shows the traceback)\n"
    )


BUG_REPORT = (
    "\nThis is a crash of wsss, not a problem with your command: a bug in wsss. Please report it on the "
    "wsss issue tracker with the command you ran, this traceback and `pip freeze`.\n"
)
"""What a crash prints after its traceback."""


def _tracebacks_wanted(argv: list[str]) -> bool:
    """The user set HYDRA_FULL_ERROR=1 or debug_errors=true (the decision is inherited by DDP ranks)."""
    if TRACEBACKS not in os.environ:
        full = os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")
        flag = any(re.fullmatch(r"\+{0,2}debug_errors=(true|True|1|yes)", a) for a in argv)
        os.environ[TRACEBACKS] = "1" if full or flag else "0"
    return os.environ[TRACEBACKS] == "1"


def cli(argv: list[str] | None = None) -> int:
    """Run ``main`` and turn user errors into one printed block and exit code 2 (``argv``: the
    arguments ``main`` reads from ``sys.argv``, for the traceback decision)."""
    show_traceback = _tracebacks_wanted(sys.argv[1:] if argv is None else argv)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises every error; this function decides what to print
    try:
        main()
    except Preempted as stopped:  # not an error: saved, (re)queued, resumes when run again
        sys.stdout.flush()
        sys.stderr.write(f"\nPreempted: {stopped}\n")
        return PREEMPTED_EXIT
    except Exception as err:
        found = user_error(err)
        if found is None:
            import traceback

            traceback.print_exc()  # the traceback first, then what to do about it
            sys.stderr.write(BUG_REPORT)
            return CRASH_EXIT
        if show_traceback:
            raise
        sys.stdout.flush()
        sys.stderr.write(format_error(*found))
        return USER_ERROR_EXIT
    return 0


DEMO = "demo"
"""``wsss demo [args]`` runs ``python -m wsss.experiments.demo [args]`` (what ``make demo`` runs)."""


def entry() -> int:
    """The ``wsss`` console script: ``wsss demo ...`` runs the demo, anything else is ``train.py ...``."""
    if sys.argv[1:2] == [DEMO]:
        from wsss.experiments import demo  # its controller table reader loads torch: only for wsss demo

        demo.main(sys.argv[2:])
        return 0
    return cli()


if __name__ == "__main__":
    sys.exit(cli())
