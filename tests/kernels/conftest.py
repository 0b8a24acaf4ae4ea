"""Kernel tests run the Triton kernels on CPU through Triton's interpreter: the kernels module is
imported under ``TRITON_INTERPRET=1`` by the suite's root ``tests/conftest.py`` (see there why)."""
