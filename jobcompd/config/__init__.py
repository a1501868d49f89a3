"""jobcompd's settings: one TOML file, and the files it names, into one frozen `Settings`.

Where a value comes from, highest precedence first:

1. ``jobcompd.toml``: the path given to `load_settings`, else ``$JOBCOMPD_CONFIG``, else
   `DEFAULT_CONFIG_PATH`;
2. ``slurm.conf``, when the top-level ``slurm_conf`` key names it: ``ClusterName`` (default topic
   and cluster name), ``JobCompType``/``JobCompLoc`` (default ``source.path``) and
   ``StateSaveLocation`` (default ``state.dir``);
3. built-in defaults.

The librdkafka properties file (``kafka.rdkafka_conf``) and ``kafka.params`` are read the way the
jobcomp/kafka plugin reads its ``JobCompLoc`` file and ``JobCompParams``, so a site's plugin
configuration can be reused as it is; every librdkafka property goes through the bundled
librdkafka's own ``rd_kafka_conf_set()``.

Nothing here logs, caches or keeps state: `load_settings` reads files and returns a value, or
raises `ConfigError` carrying every problem it found. A reload is just another call.
"""

from __future__ import annotations

from jobcompd.config.loading import load_settings, resolve_config_path
from jobcompd.config.params import parse_jobcomp_params
from jobcompd.config.secrets import is_secret
from jobcompd.config.settings import (
    _SECTIONS,
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    DEFAULT_RDKAFKA_CONF,
    REDACTED,
    ConfigError,
    ConfigProblem,
    JobCompParams,
    KafkaSettings,
    LogSettings,
    MetricsSettings,
    Settings,
    SlurmConf,
    SourceSettings,
    StateSettings,
    StatusThresholds,
    redacted,
)

__all__ = [
    "_SECTIONS",
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_RDKAFKA_CONF",
    "REDACTED",
    "ConfigError",
    "ConfigProblem",
    "JobCompParams",
    "KafkaSettings",
    "LogSettings",
    "MetricsSettings",
    "Settings",
    "SlurmConf",
    "SourceSettings",
    "StateSettings",
    "StatusThresholds",
    "is_secret",
    "load_settings",
    "parse_jobcomp_params",
    "redacted",
    "resolve_config_path",
]
