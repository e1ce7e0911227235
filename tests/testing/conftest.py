"""The plugin's own tests run inner pytest sessions with `pytester`."""

pytest_plugins = ["pytester"]
