# Registers the nerbench pytest plugin (options, fixtures, summary table) for bench/ and tests/.
pytest_plugins = ["nerbench_core.plugin"]
