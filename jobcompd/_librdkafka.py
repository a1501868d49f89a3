"""The librdkafka shared library bundled with confluent-kafka, reached through ctypes.

confluent-kafka's wheel ships its own librdkafka next to the package (``confluent_kafka.libs``).
jobcompd uses it directly where the Python API has no equivalent: ``rd_kafka_conf_set()`` to
validate a properties file exactly as the Slurm plugin does, and (in the tests) the
``rd_kafka_mock_*`` API.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import confluent_kafka


class LibrdkafkaNotFound(RuntimeError):
    """The bundled librdkafka could not be located or loaded."""


def _candidates() -> list[str]:
    pkg_dir = os.path.dirname(os.path.abspath(confluent_kafka.__file__))
    site = os.path.dirname(pkg_dir)
    found = sorted(glob.glob(os.path.join(site, "confluent_kafka.libs", "librdkafka*.so*")))
    found += sorted(glob.glob(os.path.join(pkg_dir, ".libs", "librdkafka*.so*")))
    found.append("librdkafka.so.1")  # a system copy, last resort
    return found


@functools.cache
def load() -> ctypes.CDLL:
    """Load the librdkafka that confluent-kafka itself uses (cached)."""
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
            continue
        _declare(lib)
        return lib
    raise LibrdkafkaNotFound("cannot load librdkafka: " + "; ".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_new.argtypes = []
    lib.rd_kafka_conf_destroy.restype = None
    lib.rd_kafka_conf_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_conf_set.restype = ctypes.c_int
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]


def conf_set_errors(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Feed ``(key, value)`` pairs to ``rd_kafka_conf_set()``; return each refused ``(key, error)``."""
    lib = load()
    conf = lib.rd_kafka_conf_new()
    errbuf = ctypes.create_string_buffer(512)
    refused = []
    try:
        for key, value in pairs:
            rc = lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), errbuf, ctypes.sizeof(errbuf))
            if rc != 0:  # RD_KAFKA_CONF_OK
                refused.append((key, errbuf.value.decode(errors="replace")))
    finally:
        lib.rd_kafka_conf_destroy(conf)
    return refused
