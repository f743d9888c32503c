"""Load the stormgate pytest plugin for every test run in this repository."""

pytest_plugins = ["stormgate.plugin"]
