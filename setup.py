"""The compiled reader is optional: without a C compiler, jobcompd installs and runs on its Python path.

Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "jobcompd._fastline",
            sources=["jobcompd/_fastline.c"],
            optional=True,  # a failed build leaves the Python path, never a failed install
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ]
)
