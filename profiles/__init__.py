"""Encoding profiles: built-in TOML files and the validated Profile type."""

from .profile import AudioSpec, Profile, VideoSpec, builtin_names, fit_box, load_profile

__all__ = ["AudioSpec", "Profile", "VideoSpec", "builtin_names", "fit_box", "load_profile"]
