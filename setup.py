"""Build the Cython kernels in cython_ext/: every .pyx there becomes cython_ext.<name>."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
EXTENSIONS = [
    Extension(
        f"cython_ext.{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        extra_compile_args=["-O3"],
    )
    for pyx in sorted((HERE / "cython_ext").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )
)
