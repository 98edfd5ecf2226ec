"""Settings: ``[tool.ukl-build]`` from pyproject.toml, overridden by ``-C`` config settings.

- :mod:`~ukl_build.settings.model`: the tree of frozen dataclasses (and their docs);
- :mod:`~ukl_build.settings.loader`: :func:`load_settings`, the one reader of raw
  dicts, which checks every value against its field's type;
- :mod:`~ukl_build.settings.validate`: the rules that span fields;
- :mod:`~ukl_build.settings.docs`: ``docs/configuration.md`` from the model
  (``python -m ukl_build schema``).
"""

from ukl_build.settings.docs import settings_schema_markdown
from ukl_build.settings.loader import load_settings
from ukl_build.settings.model import (
    FIRMWARE_FORMATS,
    HARDENED_RECIPE,
    MITIGATIONS_RECIPE,
    AppSourceSettings,
    CMakeSettings,
    DepSettings,
    FileSettings,
    Format,
    GenerateSettings,
    GitSettings,
    KernelSettings,
    Libc,
    MakeSettings,
    Mode,
    Origins,
    RunSettings,
    Settings,
    SignSettings,
    SourceKind,
    TreeSource,
    VolumeSettings,
    deps_references,
    generated_references,
    path_under,
    substitute_deps,
    substitute_generated,
    volume_records,
    volume_table,
)

__all__ = [
    "FIRMWARE_FORMATS", "HARDENED_RECIPE", "MITIGATIONS_RECIPE", "AppSourceSettings",
    "CMakeSettings", "DepSettings", "FileSettings", "Format", "GenerateSettings",
    "GitSettings", "KernelSettings", "Libc", "MakeSettings", "Mode", "Origins",
    "RunSettings", "Settings", "SignSettings", "SourceKind", "TreeSource", "VolumeSettings",
    "deps_references", "generated_references", "load_settings", "path_under",
    "settings_schema_markdown", "substitute_deps", "substitute_generated", "volume_records",
    "volume_table",
]
