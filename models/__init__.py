"""The model files shipped with tgc (gpt.tg, presets.toml), importable as tgc.models for importlib.resources."""
