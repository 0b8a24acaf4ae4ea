"""The training tests' fixtures live in ``tests/conftest.py`` (``demo_sets``, ``tiny_overrides``, ``tiny_config``,
``tiny_cfg``, ``trained_checkpoint``, ...), where every test folder sees them."""
