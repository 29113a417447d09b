"""From-scratch Detectron2 configs, in the layout of Detectron2's own `detectron2/config/`:

- `defaults.py`: the `cfg.MASKINIT` keys (`add_maskinit_config`, one comment per key) and the values some accept;
- `build.py`: building a config in stages (`build_config`, `load_config`; each stage recorded for `--explain`),
  the `--schedule` and `--ims-per-batch` rules;
- `checks.py`: the from-scratch rules and every key's check (`check_config`, `VALUE_RULES`, `CHOICE_RULES`);
- `dump.py`: a config as YAML (`dump_yaml`, `to_yaml`, `export_config`, `--plain`).

Import from `maskinit.config`: the names below are its API. Dotted keys are looked up with `maskinit.cfgkeys`.
"""

from ..cfgkeys import flatten
from ..cfgkeys import get_key as config_value  # the lookup by the name run_options, run_dir and tune import
from ..recipes import list_presets, preset_file, recipe_file
from .build import (
    BACKBONE_KEYS,
    DEFAULT_BASE,
    DEFAULT_PRESET,
    ITERS_PER_X_AT_16,
    REASONS,
    SCHEDULES,
    ConfigBuild,
    apply_ims_per_batch,
    apply_schedule,
    base_config_file,
    build_config,
    check_yaml_file,
    load_config,
    merge_file,
    merge_overrides,
    sync_norm_keys,
    zoo_config_file,
)
from .checks import (
    CHOICE_RULES,
    VALUE_RULES,
    check_config,
    check_from_scratch,
    check_value,
    refuse_pretrained_settings,
)
from .defaults import (
    ADAPTIVE_OPTIMIZERS,
    AMP_DTYPES,
    FIT_MODES,
    LR_SCHEDULES,
    OPTIMIZERS,
    RESNET_DEPTHS,
    add_maskinit_config,
    new_config,
)
from .dump import dump_yaml, export_config, maskinit_only_settings, to_yaml

__all__ = [
    "ADAPTIVE_OPTIMIZERS", "AMP_DTYPES", "BACKBONE_KEYS", "CHOICE_RULES", "DEFAULT_BASE", "DEFAULT_PRESET",
    "FIT_MODES", "ITERS_PER_X_AT_16", "LR_SCHEDULES", "OPTIMIZERS", "REASONS", "RESNET_DEPTHS", "SCHEDULES",
    "VALUE_RULES", "ConfigBuild", "add_maskinit_config", "apply_ims_per_batch", "apply_schedule",
    "base_config_file", "build_config", "check_config", "check_from_scratch", "check_value", "check_yaml_file",
    "config_value",
    "dump_yaml", "export_config", "flatten", "list_presets", "load_config", "maskinit_only_settings", "merge_file",
    "merge_overrides", "new_config", "preset_file", "recipe_file", "refuse_pretrained_settings", "sync_norm_keys",
    "to_yaml", "zoo_config_file",
]
