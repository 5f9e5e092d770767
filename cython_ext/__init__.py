"""Compiled kernels. Each .pyx here has a pure-Python twin that the tests hold it to."""
