"""Example sweep files: `jq enqueue experiments.quickstart` from the repository root."""
