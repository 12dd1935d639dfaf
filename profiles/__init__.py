"""Encoding profiles: built-in TOML files and the validated Profile type."""

from .profile import (
    MAX_RUNGS,
    AudioSpec,
    Profile,
    Rung,
    VideoSpec,
    builtin_names,
    fit_box,
    ladder_order,
    load_profile,
    parse_rung,
)

__all__ = ["MAX_RUNGS", "AudioSpec", "Profile", "Rung", "VideoSpec", "builtin_names", "fit_box",
           "ladder_order", "load_profile", "parse_rung"]
