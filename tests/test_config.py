"""Tests for jobcompd.config: real files in tmp_path, real librdkafka validation."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobcompd import config
from jobcompd.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    ConfigProblem,
    JobCompParams,
    SlurmConf,
    load_settings,
    parse_jobcomp_params,
    properties,
    redacted,
    resolve_config_path,
)
from jobcompd.zone import resolve as resolve_zone

ETC = Path(__file__).resolve().parent.parent / "etc"
BROKERS = "bootstrap.servers=k1:9092\n"
DEFAULTS = [("enable.idempotence", "true"), ("acks", "all")]
WEAKER = "the no-loss/no-duplicate promise is weaker"


def write(tmp_path: Path, toml: str, rdkafka: str | None = BROKERS) -> Path:
    """jobcompd.toml (dedented) and, unless None, rdkafka.conf beside it."""
    if rdkafka is not None:
        (tmp_path / "rdkafka.conf").write_text(rdkafka)
    path = tmp_path / "jobcompd.toml"
    path.write_text(textwrap.dedent(toml))
    return path


def minimal(params: str = "topic=jobs", extra: str = "") -> str:
    return (
        f'[source]\ntimezone = "UTC"\n'
        f'[kafka]\nrdkafka_conf = "rdkafka.conf"\nparams = "{params}"\n{extra}'
    )


def load(path: Path, **environ: str) -> config.Settings:
    return load_settings(path, environ=environ)


def failures(path: Path, **environ: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=environ)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(problem) for problem in caught.value.problems]


# --- the shipped example --------------------------------------------------------------------------


def test_example_config_loads_with_the_example_properties_file(tmp_path: Path) -> None:
    text = (ETC / "jobcompd.toml").read_text()
    assert 'rdkafka_conf = "/etc/jobcompd/rdkafka.conf"' in text
    shutil.copy(ETC / "rdkafka.conf", tmp_path / "rdkafka.conf")
    path = tmp_path / "jobcompd.toml"
    path.write_text(text.replace('"/etc/jobcompd/rdkafka.conf"', '"rdkafka.conf"', 1))

    settings = load(path, TZ="Asia/Tokyo")  # the shipped file leaves the zone to the system

    assert settings.config_path == path
    assert settings.source == config.SourceSettings(
        path=Path("/var/log/slurm_jobcomp.log"),
        zone=resolve_zone("Asia/Tokyo"),
        start_at="beginning",
        poll=False,
        max_line_bytes=65536,
    )
    assert settings.source.tz is ZoneInfo("Asia/Tokyo")
    assert settings.kafka.topic == "mycluster"
    assert settings.kafka.params == JobCompParams(
        flush_timeout=500, poll_interval=2, requeue_on_msg_timeout=True, topic="mycluster"
    )
    assert settings.kafka.rdkafka_conf == tmp_path / "rdkafka.conf"
    assert settings.kafka.partitioning == "sticky"
    assert list(settings.kafka.properties.items()) == [
        ("bootstrap.servers", "kafka1.example.org:9092,kafka2.example.org:9092"),
        ("linger.ms", "5"),
        ("message.timeout.ms", "300000"),
        *DEFAULTS,
    ]
    assert settings.state == config.StateSettings(
        dir=Path("/var/lib/jobcompd"), synchronous="full", max_spool_records=1_000_000
    )
    assert settings.log == config.LogSettings(
        level="info", format="kv", target="stderr", facility="daemon", debug_jobcomp=False
    )
    assert settings.status == config.StatusThresholds(
        warn_spool=10_000, crit_spool=100_000, warn_age_s=300, crit_age_s=3600
    )
    assert settings.cluster is None
    assert settings.slurm is None
    assert settings.warnings == ()


def test_example_shows_the_defaults(tmp_path: Path) -> None:
    """Every key of the example set to its documented default loads the same as an empty file."""
    shutil.copy(ETC / "rdkafka.conf", tmp_path / "rdkafka.conf")
    text = (ETC / "jobcompd.toml").read_text()
    full = write(tmp_path, text.replace('"/etc/jobcompd/rdkafka.conf"', '"rdkafka.conf"'), None)
    settings = load(full, TZ="UTC")
    bare = tmp_path / "bare.toml"
    bare.write_text(minimal("topic=mycluster,requeue_on_msg_timeout"))
    assert dataclasses.replace(load(bare), config_path=full) == settings


# --- the librdkafka properties file ---------------------------------------------------------------


def test_properties_file_grammar_is_the_plugins(tmp_path: Path) -> None:
    rdkafka = (
        "# a comment line\n"
        "bootstrap.servers =  k1:9092,k2:9092   # brokers\n"
        "\n"
        "   client.id=\tjobcompd  \n"
        "#linger.ms=1000\n"
        "socket.timeout.ms#x=5\n"
        "client.rack=\n"
        "message.timeout.ms=60000\r\n"
        "linger.ms=7#no space before the comment\n"
    )
    path = write(tmp_path, minimal(), rdkafka)

    settings = load(path)

    assert list(settings.kafka.properties.items()) == [
        ("bootstrap.servers", "k1:9092,k2:9092"),
        ("client.id", "jobcompd"),
        ("client.rack", ""),
        ("message.timeout.ms", "60000"),
        ("linger.ms", "7"),
        *DEFAULTS,
    ]
    assert settings.warnings == ()


def test_a_property_line_without_equals_is_refused_without_showing_it(tmp_path: Path) -> None:
    # The plugin skips it; the daemon would then start without the password, so it is an error.
    problems = failures(write(tmp_path, minimal(), BROKERS + "sasl.password S3cretPW5\n"))
    assert problems == [f"{tmp_path / 'rdkafka.conf'}: line 2: no '=' in it: write key=value"]


@pytest.mark.parametrize("key", ["sasl.pasword", "ssl.key.pasword", "my.secrte",
                                 "oauth.tokn", "ssl_key", "sasl.jaas.config"])
def test_a_misspelt_secret_property_is_never_echoed(tmp_path: Path, key: str) -> None:
    problems = failures(write(tmp_path, minimal(), BROKERS + f"{key}=S3cretPW5\n"))
    assert problems and all("S3cretPW5" not in p for p in problems), problems
    assert config.is_secret(key)


def test_ordinary_properties_are_not_taken_for_secrets() -> None:
    for key in ("bootstrap.servers", "security.protocol", "sasl.mechanisms", "sasl.username",
                "linger.ms", "message.timeout.ms", "enable.idempotence", "client.id", "acks"):
        assert not config.is_secret(key), key


def test_a_repeated_property_takes_the_last_value_and_place(tmp_path: Path) -> None:
    rdkafka = "linger.ms=1\nbootstrap.servers=k1:9092\nlinger.ms=2\n"
    settings = load(write(tmp_path, minimal(), rdkafka))
    assert list(settings.kafka.properties.items()) == [
        ("bootstrap.servers", "k1:9092"),
        ("linger.ms", "2"),
        *DEFAULTS,
    ]


def test_refused_key_and_value_name_file_line_and_key(tmp_path: Path) -> None:
    rdkafka = (
        "bootstrap.servers=k1:9092\n"
        "no.such.property=1\n"
        "linger.ms=abc\n"
        "message.timeout.ms=-5\n"
        "=orphan\n"
    )
    path = write(tmp_path, minimal(), rdkafka)
    conf = tmp_path / "rdkafka.conf"

    assert failures(path) == [
        f'{conf}: line 2: no.such.property=1: No such configuration property: "no.such.property"',
        f'{conf}: line 3: linger.ms=abc: Invalid value for configuration property "queue.buffering.max.ms"',
        f'{conf}: line 4: message.timeout.ms=-5: Configuration property "message.timeout.ms" value -5 is outside allowed range 0..2147483647',
        f'{conf}: line 5: =orphan: No such configuration property: ""',
    ]


def test_a_refused_secret_is_reported_without_its_value(tmp_path: Path) -> None:
    rdkafka = BROKERS + "sasl.oauthbearer.method=hunter2\n"
    problems = failures(write(tmp_path, minimal(), rdkafka))
    assert problems == [
        (
            f"{tmp_path / 'rdkafka.conf'}: line 2: sasl.oauthbearer.method=***: "
            'Invalid value "***" for configuration property "sasl.oauthbearer.method"'
        )
    ]
    assert "hunter2" not in problems[0]


def test_missing_bootstrap_servers(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(), "linger.ms=5\nbootstrap.servers=\n")
    assert failures(path) == [
        (
            f"{tmp_path / 'rdkafka.conf'}: bootstrap.servers: not set, here or in [kafka.properties] "
            f"of {path}; the producer needs at least one broker, host:port[,host:port...]"
        )
    ]


def test_metadata_broker_list_is_bootstrap_servers_too(tmp_path: Path) -> None:
    settings = load(write(tmp_path, minimal(), "metadata.broker.list=k1:9092\n"))
    assert settings.kafka.properties["metadata.broker.list"] == "k1:9092"


def test_without_a_properties_file_the_inline_properties_must_name_brokers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = tmp_path / "absent.conf"
    monkeypatch.setattr(properties, "DEFAULT_RDKAFKA_CONF", str(absent))
    toml = '[source]\ntimezone = "UTC"\n[kafka]\nparams = "topic=jobs"\n'
    path = write(tmp_path, toml, None)
    assert failures(path) == [
        (
            f"{path}: kafka: bootstrap.servers is not set: no librdkafka properties file (the "
            f"default {absent} does not exist) and none in [kafka.properties]; the producer needs "
            "at least one broker, host:port[,host:port...]"
        )
    ]

    path.write_text(toml + '[kafka.properties]\n"bootstrap.servers" = "k1:9092"\n')
    settings = load(path)
    assert settings.kafka.rdkafka_conf is None
    assert list(settings.kafka.properties.items()) == [("bootstrap.servers", "k1:9092"), *DEFAULTS]


def test_the_default_properties_file_is_read_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "default-rdkafka.conf"
    default.write_text("bootstrap.servers=dflt:9092\n")
    monkeypatch.setattr(properties, "DEFAULT_RDKAFKA_CONF", str(default))
    settings = load(write(tmp_path, '[source]\ntimezone = "UTC"\n[kafka]\nparams = "topic=t"\n'))
    assert settings.kafka.rdkafka_conf == default
    assert settings.kafka.properties["bootstrap.servers"] == "dflt:9092"


def test_empty_rdkafka_conf_reads_no_file(tmp_path: Path) -> None:
    toml = (
        '[source]\ntimezone = "UTC"\n[kafka]\nrdkafka_conf = ""\nparams = "topic=t"\n'
        '[kafka.properties]\nbootstrap.servers = "k9:9092"\n'
    )
    settings = load(write(tmp_path, toml, "this file is not read=1\n"))
    assert settings.kafka.rdkafka_conf is None
    assert list(settings.kafka.properties.items()) == [("bootstrap.servers", "k9:9092"), *DEFAULTS]


def test_unreadable_properties_file(tmp_path: Path) -> None:
    path = write(tmp_path, minimal().replace("rdkafka.conf", "nowhere.conf"), None)
    assert failures(path) == [
        (
            f"{path}: kafka.rdkafka_conf: cannot read {tmp_path / 'nowhere.conf'}: "
            "No such file or directory"
        ),
        (
            f"{tmp_path / 'nowhere.conf'}: bootstrap.servers: not set, here or in [kafka.properties] "
            f"of {path}; the producer needs at least one broker, host:port[,host:port...]"
        ),
    ]


def test_inline_properties_override_the_file(tmp_path: Path) -> None:
    extra = textwrap.dedent(
        """\
        [kafka.properties]
        linger.ms = 20
        "client.id" = "from-toml"
        socket.keepalive.enable = true
        batch.size = 1000
        """
    )
    rdkafka = "bootstrap.servers=k1:9092\nlinger.ms=5\nclient.id=from-file\ncompression.type=lz4\n"
    settings = load(write(tmp_path, minimal(extra=extra), rdkafka))
    assert list(settings.kafka.properties.items()) == [
        ("bootstrap.servers", "k1:9092"),
        ("compression.type", "lz4"),
        ("linger.ms", "20"),
        ("client.id", "from-toml"),
        ("socket.keepalive.enable", "true"),
        ("batch.size", "1000"),
        *DEFAULTS,
    ]


def test_refused_inline_properties_name_the_toml_key(tmp_path: Path) -> None:
    extra = '[kafka.properties]\nlinger.ms = "abc"\nno.such = 1\n"client.id" = ["a"]\n'
    path = write(tmp_path, minimal(extra=extra))
    assert failures(path) == [
        f'{path}: kafka.properties."client.id": expected a string, number or boolean, got array',
        (
            f'{path}: kafka.properties."linger.ms": linger.ms=abc: '
            'Invalid value for configuration property "queue.buffering.max.ms"'
        ),
        (
            f'{path}: kafka.properties."no.such": no.such=1: '
            'No such configuration property: "no.such"'
        ),
    ]


def test_world_readable_secrets_are_warned_about(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(), BROKERS + "sasl.username=u\nsasl.password=p\n")
    conf = tmp_path / "rdkafka.conf"
    os.chmod(conf, 0o644)
    assert load(path).warnings == (
        f"{conf}: holds secrets (sasl.password) but every user can read it",
    )
    os.chmod(conf, 0o640)
    assert load(path).warnings == ()


# --- producer defaults and weakened guarantees ----------------------------------------------------


def test_weaker_acks_is_kept_with_a_warning_and_no_idempotence(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(), BROKERS + "acks=1\n")
    conf = tmp_path / "rdkafka.conf"
    settings = load(path)
    assert list(settings.kafka.properties.items()) == [
        ("bootstrap.servers", "k1:9092"),
        ("acks", "1"),
    ]
    assert settings.warnings == (
        (
            f"{path}: kafka.properties: {WEAKER}: enable.idempotence stays off because librdkafka "
            "allows it only with acks=all, retries above 0, max.in.flight up to 5 and "
            f"queuing.strategy=fifo, and acks=1 ({conf}: line 2); a retried send can write a "
            "record twice or out of order"
        ),
        (
            f"{conf}: line 2: {WEAKER}: acks=1: a record counts as delivered before every in-sync "
            "replica has it, so a broker failure can lose it"
        ),
    )


def test_acks_zero_through_its_alias(tmp_path: Path) -> None:
    extra = '[kafka.properties]\n"request.required.acks" = 0\n'
    path = write(tmp_path, minimal(extra=extra))
    settings = load(path)
    assert "acks" not in settings.kafka.properties
    assert "enable.idempotence" not in settings.kafka.properties
    assert settings.warnings[-1] == (
        f'{path}: kafka.properties."request.required.acks": {WEAKER}: request.required.acks=0: '
        "the producer does not wait for the broker, so a record can be lost without any error"
    )


def test_idempotence_off_is_kept_with_a_warning_and_acks_all_added(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(), BROKERS + "enable.idempotence=false\n")
    settings = load(path)
    assert list(settings.kafka.properties.items()) == [
        ("bootstrap.servers", "k1:9092"),
        ("enable.idempotence", "false"),
        ("acks", "all"),
    ]
    assert settings.warnings == (
        (
            f"{tmp_path / 'rdkafka.conf'}: line 2: {WEAKER}: enable.idempotence=false, so a retried "
            "send can write a record twice"
        ),
    )


def test_explicit_strong_settings_raise_no_warning(tmp_path: Path) -> None:
    rdkafka = BROKERS + "acks=-1\nenable.idempotence=True\nretries=5\nmax.in.flight=5\n"
    settings = load(write(tmp_path, minimal(), rdkafka))
    assert settings.warnings == ()
    assert list(settings.kafka.properties)[-1] == "max.in.flight"


def test_retries_zero_keeps_idempotence_off(tmp_path: Path) -> None:
    settings = load(write(tmp_path, minimal(), BROKERS + "retries=0\n"))
    assert list(settings.kafka.properties.items()) == [
        ("bootstrap.servers", "k1:9092"),
        ("retries", "0"),
        ("acks", "all"),
    ]
    assert len(settings.warnings) == 1
    assert "enable.idempotence stays off" in settings.warnings[0]


def test_explicit_idempotence_with_conflicting_settings_is_an_error(tmp_path: Path) -> None:
    rdkafka = BROKERS + "enable.idempotence=true\nacks=1\nmax.in.flight.requests.per.connection=6\n"
    conf = tmp_path / "rdkafka.conf"
    assert failures(write(tmp_path, minimal(), rdkafka)) == [
        (
            f"{conf}: line 3: acks=1 conflicts with enable.idempotence=true ({conf}: line 2): "
            "librdkafka refuses to create such a producer"
        ),
        (
            f"{conf}: line 4: max.in.flight.requests.per.connection=6 conflicts with "
            f"enable.idempotence=true ({conf}: line 2): librdkafka refuses to create such a producer"
        ),
    ]


def test_properties_that_break_delivery_tracking_are_errors(tmp_path: Path) -> None:
    rdkafka = BROKERS + "delivery.report.only.error=true\ntransactional.id=slurm\n"
    conf = tmp_path / "rdkafka.conf"
    assert failures(write(tmp_path, minimal(), rdkafka)) == [
        (
            f"{conf}: line 2: delivery.report.only.error=true: jobcompd needs a delivery report for "
            "every message, a record is done only when Kafka has acknowledged it"
        ),
        (
            f"{conf}: line 3: transactional.id=slurm: jobcompd does not use Kafka transactions, and "
            "a transactional producer refuses messages outside one (enable.idempotence already "
            "prevents duplicates)"
        ),
    ]


# --- JobCompParams --------------------------------------------------------------------------------


def test_params_defaults() -> None:
    assert parse_jobcomp_params("") == (JobCompParams(500, 2, False, None), [], [])
    assert JobCompParams() == JobCompParams(500, 2, False, None)


def test_params_all_applicable_words_with_whitespace() -> None:
    text = " topic = jobs , flush_timeout=-1,poll_interval= 10 ,REQUEUE_ON_MSG_TIMEOUT ,, "
    assert parse_jobcomp_params(text) == (
        JobCompParams(
            flush_timeout=-1, poll_interval=10, requeue_on_msg_timeout=True, topic="jobs"
        ),
        [],
        [],
    )
    assert parse_jobcomp_params("flush_timeout=0")[0].flush_timeout == 0


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("flush_timeout=abc", "flush_timeout=abc is not an integer"),
        ("flush_timeout=", "flush_timeout= is not an integer"),
        ("flush_timeout=1.5", "flush_timeout=1.5 is not an integer"),
        (
            "flush_timeout=-2",
            "flush_timeout=-2 is out of range: -1 (wait forever), 0 (do not wait) or milliseconds",
        ),
        ("poll_interval=-1", "poll_interval=-1 is out of range: seconds, 0 or more"),
        (
            "poll_interval=99999999999",
            "poll_interval=99999999999 is out of range: seconds, 0 or more",
        ),
        ("flush_timeout", "flush_timeout needs a value: flush_timeout=<milliseconds>"),
        ("topic", "topic needs a value: topic=<name>"),
        ("topic=", "topic= needs a topic name"),
        (
            "topic=my topic",
            (
                "topic=my topic is not a valid Kafka topic name (letters, digits, '.', '_', '-'; "
                "at most 249)"
            ),
        ),
        (
            "requeue_on_msg_timeout=yes",
            "requeue_on_msg_timeout=yes: requeue_on_msg_timeout is a flag, it takes no value",
        ),
    ],
)
def test_params_bad_values_are_errors_naming_the_word(text: str, error: str) -> None:
    params, errors, warnings = parse_jobcomp_params(text)
    assert errors == [error]
    assert warnings == []
    assert params == JobCompParams()


def test_a_bad_param_is_reported_against_kafka_params(tmp_path: Path) -> None:
    path = write(tmp_path, minimal("topic=jobs,flush_timeout=abc"))
    assert failures(path) == [f"{path}: kafka.params: flush_timeout=abc is not an integer"]


def test_unknown_params_are_warnings() -> None:
    params, errors, warnings = parse_jobcomp_params("topic=t,flush_timout=100,colour=blue")
    assert params == JobCompParams(topic="t")
    assert errors == []
    assert warnings == [
        "unknown parameter 'flush_timout=100' is ignored (did you mean 'flush_timeout'?)",
        "unknown parameter 'colour=blue' is ignored",
    ]


def test_params_with_no_effect_are_accepted_with_the_reason() -> None:
    text = (
        "topic=t,enable_job_start,topic_job_start=t-start,purge_in_flight,purge_non_blocking,"
        "requeue_purge_in_flight,send_comment,send_script"
    )
    params, errors, warnings = parse_jobcomp_params(text)
    assert params == JobCompParams(topic="t")
    assert errors == []
    start = (
        "jobcomp/filetxt writes nothing when a job starts, so there are no job-start events to send"
    )
    purge = (
        "jobcompd never purges at shutdown; records Kafka has not acknowledged stay in its spool "
        "and are sent again after a restart"
    )
    text_fields = "the jobcomp/filetxt line carries neither the job's comment nor its script"
    assert warnings == [
        f"enable_job_start has no effect in jobcompd: {start}",
        f"topic_job_start has no effect in jobcompd: {start}",
        f"purge_in_flight has no effect in jobcompd: {purge}",
        f"purge_non_blocking has no effect in jobcompd: {purge}",
        f"requeue_purge_in_flight has no effect in jobcompd: {purge}",
        f"send_comment has no effect in jobcompd: {text_fields}",
        f"send_script has no effect in jobcompd: {text_fields}",
    ]


def test_param_warnings_reach_settings(tmp_path: Path) -> None:
    path = write(tmp_path, minimal("topic=jobs,send_script,poll_interval=0"))
    settings = load(path)
    assert settings.kafka.params == JobCompParams(poll_interval=0, topic="jobs")
    assert settings.warnings == (
        (
            f"{path}: kafka.params: send_script has no effect in jobcompd: the jobcomp/filetxt line "
            "carries neither the job's comment nor its script"
        ),
        f"{path}: kafka.params: poll_interval=0 serves delivery reports without pausing (busy loop)",
    )


def test_a_repeated_param_keeps_the_first_like_the_plugin() -> None:
    params, errors, warnings = parse_jobcomp_params("topic=a,flush_timeout=1,topic=b")
    assert params == JobCompParams(flush_timeout=1, topic="a")
    assert errors == []
    assert warnings == ["topic is given more than once; the first, topic=a, applies"]


@given(st.text())
def test_params_parsing_never_raises(text: str) -> None:
    params, errors, warnings = parse_jobcomp_params(text)
    assert -1 <= params.flush_timeout <= 2**31 - 1
    assert 0 <= params.poll_interval <= 2**31 - 1
    assert all(isinstance(message, str) for message in errors + warnings)


# --- slurm.conf -----------------------------------------------------------------------------------

SLURM_CONF = """\
# slurm.conf
ClusterName=MyCluster   # upper case is lowered, as slurmctld does
SlurmctldHost=ctl
jobcomptype=jobcomp/filetxt JobCompLoc="/var/log/slurm/jobcomp.log"
StateSaveLocation = /var/spool/slurmctld
Include /etc/slurm/extra.conf
NodeName=n[1-4] ClusterName=not-this CPUs=4
PartitionName=debug Nodes=ALL Default=YES
"""


def write_slurm(tmp_path: Path, text: str = SLURM_CONF) -> Path:
    path = tmp_path / "slurm.conf"
    path.write_text(text)
    return path


def test_slurm_conf_supplies_defaults(tmp_path: Path) -> None:
    slurm = write_slurm(tmp_path)
    toml = 'slurm_conf = "slurm.conf"\n' + minimal(params="flush_timeout=100")

    settings = load(write(tmp_path, toml))

    assert settings.slurm == SlurmConf(
        path=slurm,
        cluster_name="mycluster",
        job_comp_type="jobcomp/filetxt",
        job_comp_loc="/var/log/slurm/jobcomp.log",
        state_save_location="/var/spool/slurmctld",
    )
    assert settings.cluster == "mycluster"
    assert settings.kafka.topic == "mycluster"
    assert settings.kafka.params.topic is None
    assert settings.source.path == Path("/var/log/slurm/jobcomp.log")
    assert settings.state.dir == Path("/var/spool/slurmctld/jobcompd")
    assert settings.warnings == (
        (
            f"{slurm}: line 6: Include /etc/slurm/extra.conf is not read; if it sets ClusterName, "
            "JobCompType, JobCompLoc or StateSaveLocation, set the jobcompd.toml equivalents instead"
        ),
    )


def test_explicit_toml_values_win_over_slurm_conf(tmp_path: Path) -> None:
    write_slurm(
        tmp_path,
        "ClusterName=c1\nJobCompType=jobcomp/filetxt\nJobCompLoc=/a.log\nStateSaveLocation=/ssl\n",
    )
    toml = (
        'slurm_conf = "slurm.conf"\n'
        '[source]\npath = "/b.log"\ntimezone = "UTC"\n'
        '[kafka]\nrdkafka_conf = "rdkafka.conf"\nparams = "topic=jobs"\n'
        '[state]\ndir = "/state"\n'
    )
    path = write(tmp_path, toml)
    settings = load(path)
    assert settings.kafka.topic == "jobs"
    assert settings.cluster == "c1"
    assert settings.source.path == Path("/b.log")
    assert settings.state.dir == Path("/state")
    assert settings.warnings == (
        f"{path}: source.path: /b.log differs from slurm.conf's JobCompLoc=/a.log; reading /b.log",
    )


def test_slurm_conf_with_another_jobcomp_type_is_not_a_source(tmp_path: Path) -> None:
    slurm = write_slurm(
        tmp_path, "ClusterName=c1\nJobCompType=jobcomp/kafka\nJobCompLoc=/etc/slurm/rdkafka.conf\n"
    )
    path = write(tmp_path, 'slurm_conf = "slurm.conf"\n' + minimal(params=""))
    settings = load(path)
    assert settings.source.path == Path("/var/log/slurm_jobcomp.log")
    assert settings.state.dir == Path("/var/lib/jobcompd")
    assert settings.kafka.topic == "c1"
    assert settings.warnings == (
        (
            f"{path}: source.path: slurm.conf {slurm} has JobCompType=jobcomp/kafka, so slurmctld "
            "writes no filetxt log; reading /var/log/slurm_jobcomp.log anyway"
        ),
    )


def test_slurm_conf_filetxt_without_jobcomploc_uses_slurms_default(tmp_path: Path) -> None:
    write_slurm(tmp_path, "ClusterName=c1 JobCompType=jobcomp/filetxt\n")
    settings = load(write(tmp_path, 'slurm_conf = "slurm.conf"\n' + minimal()))
    assert settings.source.path == Path("/var/log/slurm_jobcomp.log")
    assert settings.warnings == ()


def test_slurm_conf_comments_continuations_and_escapes(tmp_path: Path) -> None:
    write_slurm(
        tmp_path,
        "#ClusterName=commented\n"
        "JobCompType=jobcomp/filetxt \\\n"
        "  JobCompLoc=/var/log/jc\\#1.log # a comment\n"
        "CLUSTERNAME=Last\n",
    )
    settings = load(write(tmp_path, 'slurm_conf = "slurm.conf"\n' + minimal()))
    assert settings.slurm is not None
    assert settings.slurm.cluster_name == "last"
    assert settings.source.path == Path("/var/log/jc#1.log")


def test_missing_slurm_conf_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'slurm_conf = "/nonexistent/slurm.conf"\n' + minimal())
    assert failures(path) == [
        f"{path}: slurm_conf: cannot read /nonexistent/slurm.conf: No such file or directory"
    ]


def test_topic_must_be_known(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(params="flush_timeout=100"))
    assert failures(path) == [
        (
            f"{path}: kafka.params: no Kafka topic: add topic=<name> to kafka.params, or set "
            "slurm_conf to a slurm.conf with ClusterName (the plugin's default topic)"
        )
    ]
    write_slurm(tmp_path, "SlurmctldHost=ctl\n")
    path.write_text('slurm_conf = "slurm.conf"\n' + minimal(params=""))
    assert len(failures(path)) == 1


def test_a_bad_topic_is_reported_once(tmp_path: Path) -> None:
    bad_topic = "kafka.params: topic=a b is not a valid Kafka topic name (letters, digits, '.', "
    bad_topic += "'_', '-'; at most 249)"
    path = write(tmp_path, minimal(params="topic=a b"))
    assert failures(path) == [f"{path}: {bad_topic}"]
    write_slurm(tmp_path, "ClusterName=c1\n")
    path.write_text('slurm_conf = "slurm.conf"\n' + minimal(params="topic=a b"))
    assert failures(path) == [f"{path}: {bad_topic}"]


def test_a_clustername_that_is_no_topic_name(tmp_path: Path) -> None:
    slurm = write_slurm(tmp_path, "ClusterName=my+cluster\n")
    path = write(tmp_path, 'slurm_conf = "slurm.conf"\n' + minimal(params=""))
    assert failures(path) == [
        (
            f"{slurm}: ClusterName: my+cluster is not a valid Kafka topic name (letters, digits, '.', "
            "'_', '-'; at most 249), so it cannot be the default topic; add topic=<name> to "
            "kafka.params"
        )
    ]


# --- source.timezone ------------------------------------------------------------------------------


def test_unknown_timezone(tmp_path: Path) -> None:
    path = write(tmp_path, minimal().replace('"UTC"', '"Mars/Olympus_Mons"'))
    assert failures(path) == [
        f"{path}: source.timezone: 'Mars/Olympus_Mons' is not a known IANA time zone"
    ]


def test_timezone_defaults_to_tz(tmp_path: Path) -> None:
    path = write(tmp_path, minimal().replace('timezone = "UTC"\n', ""))
    assert load(path, TZ="Europe/Berlin").source.timezone == "Europe/Berlin"
    assert load(path, TZ=":America/New_York").source.tz is ZoneInfo("America/New_York")
    assert load(path, TZ="").source.timezone == "UTC"
    assert failures(path, TZ="CET-1CEST,M3.5.0,M10.5.0/3") == [
        (
            f"{path}: source.timezone: the system zone cannot be used (TZ=CET-1CEST,M3.5.0,M10.5.0/3 "
            "is not an IANA zone name (POSIX TZ rules are not supported)); set the zone slurmctld "
            'writes its times in, e.g. "Europe/Berlin"'
        )
    ]
    path.write_text(minimal().replace('"UTC"', '"localtime"'))
    assert load(path, TZ="Asia/Tokyo").source.timezone == "Asia/Tokyo"


# --- the TOML file itself -------------------------------------------------------------------------


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    toml = minimal() + '[source.extra]\n[sources]\npath = "x"\n[log]\nlevl = "info"\n'
    path = write(tmp_path, minimal().replace("timezone", "tmiezone") + "slurm = 1\n")
    assert failures(path, TZ="UTC") == [
        f"{path}: source.tmiezone: unknown key (did you mean 'timezone'?)",
        f"{path}: kafka.slurm: unknown key",
    ]
    path = write(tmp_path, toml)
    assert failures(path) == [
        f"{path}: sources: unknown key (did you mean 'source'?)",
        f"{path}: source.extra: unknown key",
        f"{path}: log.levl: unknown key (did you mean 'level'?)",
    ]


def test_parse_worker_is_auto_unless_set(tmp_path: Path) -> None:
    assert load(write(tmp_path, minimal())).source.parse_worker == "auto"
    for text, value in (("false", False), ("true", True), ('"auto"', "auto")):
        set_ = minimal().replace('timezone = "UTC"\n', f'timezone = "UTC"\nparse_worker = {text}\n')
        assert load(write(tmp_path, set_)).source.parse_worker == value
    wrong = minimal().replace('timezone = "UTC"\n', 'timezone = "UTC"\nparse_worker = "on"\n')
    path = write(tmp_path, wrong)
    assert failures(path) == [f"{path}: source.parse_worker: expected true, false or \"auto\", got string 'on'"]


def test_wrong_types_name_the_key_and_the_expected_type(tmp_path: Path) -> None:
    toml = (
        'slurm_conf = 5\n[source]\ntimezone = "UTC"\npoll = "yes"\nmax_line_bytes = true\n'
        '[kafka]\nrdkafka_conf = "rdkafka.conf"\nparams = ["topic=jobs"]\n'
        "[state]\nmax_spool_records = 1.5\n[log]\ndebug_jobcomp = 1\n"
    )
    path = write(tmp_path, toml)
    assert failures(path)[:5] == [
        f"{path}: slurm_conf: expected a string, got integer 5",
        f"{path}: source.poll: expected a boolean (true or false), got string 'yes'",
        f"{path}: source.max_line_bytes: expected an integer, got boolean True",
        f"{path}: kafka.params: expected a string, got array ['topic=jobs']",
        (
            f"{path}: kafka.params: no Kafka topic: add topic=<name> to kafka.params, or set "
            "slurm_conf to a slurm.conf with ClusterName (the plugin's default topic)"
        ),
    ]
    assert failures(path)[5:] == [
        f"{path}: state.max_spool_records: expected an integer, got float 1.5",
        f"{path}: log.debug_jobcomp: expected a boolean (true or false), got integer 1",
    ]
    path.write_text('kafka = "x"\n[source]\ntimezone = "UTC"\n')
    assert failures(path)[0] == f"{path}: kafka: expected a table, got string 'x'"


def test_bad_choices_and_ranges(tmp_path: Path) -> None:
    extra = (
        '[source]\nstart_at = "middle"\nmax_line_bytes = 0\n'
        '[state]\nsynchronous = "off"\n'
        '[log]\nlevel = "verbose"\nformat = "xml"\ntarget = "file"\nfacility = "local9"\n'
        "[status]\nwarn_spool = 10\ncrit_spool = 5\nwarn_age_s = -1\n"
    )
    kafka = '[kafka]\nrdkafka_conf = "rdkafka.conf"\nparams = "topic=t"\npartitioning = "hash"\n'
    toml = (kafka + extra).replace(
        "[source]\n", '[source]\ntimezone = "UTC"\n'
    )
    path = write(tmp_path, toml)
    assert failures(path) == [
        f"{path}: source.start_at: 'middle' is not one of: beginning, end",
        f"{path}: source.max_line_bytes: 0 is below the minimum, 1",
        f"{path}: kafka.partitioning: 'hash' is not one of: key, sticky",
        f"{path}: state.synchronous: 'off' is not one of: full, normal",
        f"{path}: log.level: 'verbose' is not one of: debug, info, warning, error",
        (
            f"{path}: log.facility: 'local9' is not one of: auth, authpriv, cron, daemon, ftp, kern, "
            "local0, local1, local2, local3, local4, local5, local6, local7, lpr, mail, news, "
            "syslog, user, uucp"
        ),
        f"{path}: log.format: 'xml' is not one of: kv, json",
        f"{path}: log.target: 'file' is not one of: stderr, syslog",
        f"{path}: status.warn_age_s: -1 is below the minimum, 0",
        f"{path}: status.crit_spool: 5 is below status.warn_spool (10)",
    ]


def test_choices_are_case_insensitive(tmp_path: Path) -> None:
    extra = '[log]\nlevel = "DEBUG"\ntarget = "Syslog"\nfacility = "LOCAL3"\n'
    settings = load(write(tmp_path, minimal(extra=extra)))
    assert settings.log == config.LogSettings(
        level="debug", format="kv", target="syslog", facility="local3", debug_jobcomp=False
    )


def test_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\ntimezone = "UTC"\npoll = yes\n')
    assert failures(path) == [f"{path}: line 3: not valid TOML: Invalid value (column 8)"]


def test_unreadable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    assert failures(path) == [f"{path}: cannot read: No such file or directory"]


def test_every_problem_is_collected_at_once(tmp_path: Path) -> None:
    toml = (
        "colour = 1\n"
        '[source]\ntimezone = "Nowhere/Land"\npoll = "no"\n'
        '[kafka]\nrdkafka_conf = "rdkafka.conf"\nparams = "flush_timeout=x"\n'
        "[status]\ncrit_age_s = 1\n"
    )
    conf = tmp_path / "rdkafka.conf"
    path = write(tmp_path, toml, "linger.ms=x\nbogus=1\n")
    assert sorted(failures(path)) == sorted(
        [
            f"{path}: colour: unknown key",
            f"{path}: source.poll: expected a boolean (true or false), got string 'no'",
            f"{path}: source.timezone: 'Nowhere/Land' is not a known IANA time zone",
            f"{path}: kafka.params: flush_timeout=x is not an integer",
            (
                f"{path}: kafka.params: no Kafka topic: add topic=<name> to kafka.params, or set "
                "slurm_conf to a slurm.conf with ClusterName (the plugin's default topic)"
            ),
            f'{conf}: line 1: linger.ms=x: Invalid value for configuration property "queue.buffering.max.ms"',
            f'{conf}: line 2: bogus=1: No such configuration property: "bogus"',
            (
                f"{conf}: bootstrap.servers: not set, here or in [kafka.properties] of {path}; the "
                "producer needs at least one broker, host:port[,host:port...]"
            ),
            f"{path}: status.crit_age_s: 1 is below status.warn_age_s (300)",
        ]
    )


def test_config_error_carries_the_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(params="send_comment"))
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.warnings == (
        (
            f"{path}: kafka.params: send_comment has no effect in jobcompd: the jobcomp/filetxt "
            "line carries neither the job's comment nor its script"
        ),
    )


def test_config_problem_format() -> None:
    problem = ConfigProblem(
        "/etc/jobcompd/jobcompd.toml", "kafka.params", "flush_timeout=abc is not an integer"
    )
    assert (
        str(problem)
        == "/etc/jobcompd/jobcompd.toml: kafka.params: flush_timeout=abc is not an integer"
    )
    assert str(ConfigProblem("/x.toml", "", "cannot read")) == "/x.toml: cannot read"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    shutil.copy(ETC / "rdkafka.conf", tmp_path / "conf" / "kafka.conf")
    toml = (
        '[source]\npath = "../log/jobcomp.log"\ntimezone = "UTC"\n'
        '[kafka]\nrdkafka_conf = "kafka.conf"\nparams = "topic=t"\n[state]\ndir = "state"\n'
    )
    path = tmp_path / "conf" / "jobcompd.toml"
    path.write_text(toml)
    settings = load(path)
    assert settings.source.path == tmp_path / "log" / "jobcomp.log"
    assert settings.kafka.rdkafka_conf == tmp_path / "conf" / "kafka.conf"
    assert settings.state.dir == tmp_path / "conf" / "state"


# --- the API around Settings ----------------------------------------------------------------------


def test_config_path_from_argument_environment_or_default(tmp_path: Path) -> None:
    path = write(tmp_path, minimal())
    assert resolve_config_path(None, {}) == Path(DEFAULT_CONFIG_PATH)
    assert resolve_config_path(None, {"JOBCOMPD_CONFIG": str(path)}) == path
    assert resolve_config_path(path, {"JOBCOMPD_CONFIG": "/elsewhere.toml"}) == path
    assert load_settings(environ={"JOBCOMPD_CONFIG": str(path)}).config_path == path


def test_settings_are_frozen_and_a_reload_is_equal(tmp_path: Path) -> None:
    path = write(tmp_path, minimal())
    first, second = load(path), load(path)
    assert first == second
    assert first is not second
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.kafka = second.kafka  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.kafka.properties["acks"] = "1"  # type: ignore[index]
    producer_config = first.kafka.producer_config()
    assert type(producer_config) is dict
    assert producer_config == {"bootstrap.servers": "k1:9092", **dict(DEFAULTS)}
    producer_config["acks"] = "1"
    assert first.kafka.properties["acks"] == "all"


def test_redacted_hides_secrets_only(tmp_path: Path) -> None:
    rdkafka = BROKERS + (
        "security.protocol=SASL_SSL\n"
        "sasl.mechanisms=OAUTHBEARER\n"
        "sasl.username=slurm\n"
        "sasl.password=hunter2\n"
        "sasl.oauthbearer.client.secret=s3cr3t\n"
        "ssl.key.password=pw\n"
        "ssl.key.location=/etc/jobcompd/client.key\n"
    )
    path = write(tmp_path, minimal(), rdkafka)
    os.chmod(tmp_path / "rdkafka.conf", 0o600)
    settings = load(path)

    shown = redacted(settings)

    assert shown["kafka"]["properties"] == {
        "bootstrap.servers": "k1:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "OAUTHBEARER",
        "sasl.username": "slurm",
        "sasl.password": "***",
        "sasl.oauthbearer.client.secret": "***",
        "ssl.key.password": "***",
        "ssl.key.location": "***",
        "enable.idempotence": "true",
        "acks": "all",
    }
    assert settings.kafka.properties["sasl.password"] == "hunter2"
    dumped = json.dumps(shown)
    assert "hunter2" not in dumped and "s3cr3t" not in dumped
    assert shown["kafka"]["params"] == {
        "flush_timeout": 500,
        "poll_interval": 2,
        "requeue_on_msg_timeout": False,
        "topic": "jobs",
    }
    assert shown["source"] == {
        "path": "/var/log/slurm_jobcomp.log",
        "zone": "UTC",
        "start_at": "beginning",
        "poll": False,
        "max_line_bytes": 65536,
        "parse_worker": "auto",
    }
    assert shown["config_path"] == str(path)
    assert shown["kafka"]["rdkafka_conf"] == str(tmp_path / "rdkafka.conf")
    assert shown["slurm"] is None
    # Derived from the fields: every section and every field of it is shown.
    assert set(shown) == {f.name for f in dataclasses.fields(settings)}
    assert set(shown["state"]) == {f.name for f in dataclasses.fields(settings.state)}
    assert shown["warnings"] == []


def test_metrics_listen_and_textfile(tmp_path: Path) -> None:
    settings = load(write(tmp_path, minimal(extra='[metrics]\nlisten = "[::1]:9464"\ntextfile = "m.prom"\n')))
    assert (settings.metrics.host, settings.metrics.port) == ("::1", 9464)
    assert settings.metrics.textfile == tmp_path / "m.prom"
    assert load(write(tmp_path, minimal())).metrics.port is None
    problems = failures(write(tmp_path, minimal(extra='[metrics]\nlisten = "9464"\n')))
    assert problems and "metrics.listen" in problems[0] and "HOST:PORT" in problems[0]


def test_known_ids_days_is_a_number_of_days(tmp_path: Path) -> None:
    settings = load(write(tmp_path, minimal(extra="[state]\nknown_ids_days = 0.5\n")))
    assert settings.state.known_ids_days == 0.5
    problems = failures(write(tmp_path, minimal(extra="[state]\nknown_ids_days = -1\n")))
    assert problems and "state.known_ids_days" in problems[0]
