"""Tools for tests and local trials: fake servers, data factories, real-server launchers."""
