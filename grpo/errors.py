"""The errors the `grpo` command reports in one line (exit code 2, no traceback unless --debug or
GRPO_DEBUG=1). Each says what is wrong and where: the setting, the file and line, the function and
sample. Kept in one small module so the command can catch them before importing torch."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range; or an input it
    names (a model, a data file, a checkpoint, a reward function) cannot be used."""


class DeviceError(ConfigError):
    """The device asked for is not on this machine (no CUDA, a GPU index out of range, a bad name)."""


class RewardError(RuntimeError):
    """A reward function raised, hung, ended its process, or returned something other than one
    number per completion (with `reward_failure: stop`, the default)."""


class EnvironmentFailure(RuntimeError):
    """An environment's reset or step raised or ran past env_timeout (grpo/envs/contain.py)."""


class NonFinite(RuntimeError):
    """A non-finite loss or gradient in an update (with `nonfinite: stop`, the default), or non-finite
    log-probs when sampling (`phase` "sampling": the model itself is broken): the run stops after the
    step, its weights as they were before that update."""

    def __init__(self, message: str, phase: str = "update"):
        super().__init__(message)
        self.phase = phase


class CheckpointError(ConfigError):
    """A checkpoint to resume from is missing, incomplete, damaged or from an incompatible run."""


class Stopped(Exception):
    """The run stopped on a signal after a whole step; the message says where and how to go on."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum            # the shell's convention: 130 for SIGINT, 143 for SIGTERM
