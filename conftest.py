"""pytest set-up shared by the suite: the repo root is importable, shared model fixtures load."""
pytest_plugins = ["tests.model_files"]
