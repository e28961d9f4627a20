"""Typed configuration: one dataclass, one place that validates it, presets as named bundles.

Every field is at once
  * an attribute of `TrainConfig`,
  * a YAML key of the same name (`--config run.yaml`), and
  * a command-line flag, the name in kebab-case (`group_size` -> `--group-size`).

Resolution order, later wins:
  field defaults  <  preset  <  demo defaults (only when no --model is given)  <  YAML  <  flags.

The package reads as its parts: fields.py (the dataclass), presets.py (the bundles, the demo's
defaults and the rules derived from settings), checks.py (typing and validation), resolve.py (the
sources merged, YAML in and out), levers.py (the speed and memory levers' settings object).
"""

from __future__ import annotations

from ..errors import ConfigError
from .checks import check_split, coerce, field_type, validate
from .fields import FIELDS, TrainConfig
from .levers import LEVER_FIELDS, Levers
from .presets import (ALGORITHM_FIELDS, CALCULATOR_DEMO_DEFAULTS, CALCULATOR_DEMO_ENVS, DEMO_DEFAULTS,
                      LOSS_PARAMETERS, PRESETS, ROLLOUT_IS_BOUNDS, needs_reference, rollout_is_bounds)
from .resolve import check_known, load_yaml, resolve, save_yaml, to_dict

__all__ = ["ConfigError", "TrainConfig", "FIELDS", "Levers", "LEVER_FIELDS", "PRESETS", "LOSS_PARAMETERS",
           "ALGORITHM_FIELDS", "DEMO_DEFAULTS", "CALCULATOR_DEMO_DEFAULTS", "CALCULATOR_DEMO_ENVS",
           "ROLLOUT_IS_BOUNDS", "rollout_is_bounds", "needs_reference", "check_split", "coerce", "field_type", "validate",
           "check_known", "load_yaml", "resolve", "save_yaml", "to_dict"]
