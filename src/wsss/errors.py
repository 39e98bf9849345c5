"""Every error a user can cause and fix, in one place.

A ``WsssError`` carries a message that names the problem and the fix. ``train.py`` prints it as one
block without a traceback (exit code 2); anything else is a bug and keeps its traceback. Each class
also derives from the builtin it refines (``ValueError``, ``FileNotFoundError`` ...), so callers that
catch the builtin keep working.
"""

from __future__ import annotations


class WsssError(Exception):
    """An error the user can fix; its message says how."""


class ConfigError(WsssError, ValueError):
    """A config value outside what wsss supports, or a combination that cannot work."""


class PlanError(WsssError, ValueError):
    """A pipeline whose stages cannot run in the order given (an input nothing makes)."""


class SweepError(WsssError, RuntimeError):
    """Jobs of a sweep failed (the others ran; the sweep's report lists the failures)."""


class MissingArtifactError(WsssError, FileNotFoundError):
    """An upstream stage's output is absent or unfinished."""


class ArtifactMismatchError(WsssError, ValueError):
    """An artifact was made with settings that contradict the current config on a defining key."""


class StageCompleteError(WsssError, FileExistsError):
    """A finished stage was asked to run again without ``force=true``."""


class CorruptArtifactError(WsssError, ValueError):
    """A file written by a stage cannot be read back (truncated, wrong format, wrong shape)."""


class AdoptionError(WsssError, ValueError):
    """A file or folder given to ``stage=adopt`` is not a valid artifact of the named stage."""


class WeightsError(WsssError, ValueError):
    """A weights file that cannot be used as asked (unknown format, shape mismatch, missing keys)."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A weights file named in the config does not exist."""


class MissingCRFError(WsssError, ImportError):
    """pydensecrf is not installed but a dense CRF was asked for."""


class UnsupportedLaunchError(WsssError, RuntimeError):
    """A launcher/strategy combination that cannot work."""


class DatasetLayoutError(WsssError, ValueError):
    """The dataset folder does not have the layout or content wsss expects."""


class MissingRootError(DatasetLayoutError):
    """``data.root`` is absent or holds no VOC2012 folder."""


class MissingFolderError(DatasetLayoutError):
    """A required sub-folder (JPEGImages, a mask or saliency folder) is absent."""


class MissingListError(DatasetLayoutError):
    """The split's list file ``ImageSets/Segmentation/<split>.txt`` is absent or empty."""


class MissingImageError(DatasetLayoutError):
    """A split list names images (or required masks) that are not on disk."""


class MaskSizeError(DatasetLayoutError):
    """A mask, saliency map or pseudo label does not have its image's size."""


class MaskValueError(DatasetLayoutError):
    """A mask holds values other than 0..20 and 255, or is not an index PNG."""


class MissingSaliencyError(DatasetLayoutError):
    """Saliency maps are needed but missing (no folder, or no map for an image)."""


class CorruptImageError(DatasetLayoutError):
    """An image, mask or saliency file cannot be decoded."""


class MissingLabelsError(DatasetLayoutError):
    """Image-level labels were asked for an image that has neither a mask nor a labels-file entry."""


class UnknownKeyError(ConfigError):
    """A ``+key=value`` override (or a Trainer argument) naming a key wsss does not have: usually a typo."""


class TrainingError(WsssError, RuntimeError):
    """Training ended without a network a later stage can use (no checkpoint kept)."""


class DivergedTrainingError(TrainingError):
    """The loss or the weights became NaN or infinite."""


PREEMPTED_EXIT = 75
"""Exit status of a preempted job (EX_TEMPFAIL: run it again; a requeued job does so by itself)."""


class Preempted(SystemExit):
    """Not an error: the job stopped at a scheduler's signal after saving what it needs to resume
    (``wsss.tasks.preemption``). ``train.py`` prints the message and exits with ``PREEMPTED_EXIT``."""

    def __init__(self, message: str) -> None:
        super().__init__(PREEMPTED_EXIT)
        self.message = message

    def __str__(self) -> str:
        return self.message
