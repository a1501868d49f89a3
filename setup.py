"""The compiled reader and send loop are optional: without a C compiler, jobcompd installs and runs
on its Python path.

Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            name,
            sources=[source],
            optional=True,  # a failed build leaves the Python path, never a failed install
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
        for name, source in (
            ("jobcompd._fastline", "jobcompd/_fastline.c"),  # the record reader (jobcompd/fastpath.py)
            ("jobcompd._sendloop", "jobcompd/_sendloop.c"),  # the send loop (jobcompd/sendloop.py)
        )
    ]
)
