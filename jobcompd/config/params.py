"""The plugin's JobCompParams words: parsed as the plugin parses them."""

from __future__ import annotations

import re

from jobcompd.config._reader import _did_you_mean
from jobcompd.config.settings import JobCompParams

_INT32_MAX = 2**31 - 1

_WHITESPACE = " \t\n\v\f\r"  # C isspace(), what Slurm's xstrtrim() removes

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

_PARAM_VALUED = {
    "flush_timeout": "<milliseconds>",
    "poll_interval": "<seconds>",
    "topic": "<name>",
    "topic_job_start": "<name>",
}

_PARAM_FLAGS = (
    "requeue_on_msg_timeout",
    "enable_job_start",
    "purge_in_flight",
    "purge_non_blocking",
    "requeue_purge_in_flight",
    "send_comment",
    "send_script",
)

_NO_JOB_START = (
    "jobcomp/filetxt writes nothing when a job starts, so there are no job-start events to send"
)

_NO_PURGE = (
    "jobcompd never purges at shutdown; records Kafka has not acknowledged stay in its spool "
    "and are sent again after a restart"
)

_NO_COMMENT_SCRIPT = "the jobcomp/filetxt line carries neither the job's comment nor its script"

_PARAM_NO_EFFECT = {
    "topic_job_start": _NO_JOB_START,
    "enable_job_start": _NO_JOB_START,
    "purge_in_flight": _NO_PURGE,
    "purge_non_blocking": _NO_PURGE,
    "requeue_purge_in_flight": _NO_PURGE,
    "send_comment": _NO_COMMENT_SCRIPT,
    "send_script": _NO_COMMENT_SCRIPT,
}

_BAD_TOPIC = "is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"


def _int_param(
    values: dict[str, str], word: str, default: int, low: int, errors: list[str], meaning: str
) -> int:
    if word not in values:
        return default
    text = values[word]
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        errors.append(f"{word}={text} is not an integer")
        return default
    number = int(text)
    if not low <= number <= _INT32_MAX:
        errors.append(f"{word}={text} is out of range: {meaning}")
        return default
    return number


def parse_jobcomp_params(text: str) -> tuple[JobCompParams, list[str], list[str]]:
    """Parse a ``JobCompParams`` string; return the params, the errors and the warnings.

    Comma separated items, whitespace around them ignored, names case-insensitive (values kept
    as written). An unknown name or one that has no effect in jobcompd is a warning; a bad
    value of a known name is an error. When a name is given twice the first one applies, as in
    the plugin (which finds it with ``strstr()``).
    """
    errors: list[str] = []
    warnings: list[str] = []
    values: dict[str, str] = {}
    flags: set[str] = set()
    for raw in text.split(","):
        item = raw.strip(_WHITESPACE)
        if not item:
            continue
        name, sep, value = item.partition("=")
        word = name.strip(_WHITESPACE).lower()
        value = value.strip(_WHITESPACE)
        if word in _PARAM_VALUED:
            if not sep:
                errors.append(f"{word} needs a value: {word}={_PARAM_VALUED[word]}")
            elif word in values:
                warnings.append(
                    f"{word} is given more than once; the first, {word}={values[word]}, applies"
                )
            else:
                values[word] = value
        elif word in _PARAM_FLAGS:
            if sep:
                errors.append(f"{item}: {word} is a flag, it takes no value")
            else:
                flags.add(word)
        else:
            hint = _did_you_mean(word, [*_PARAM_VALUED, *_PARAM_FLAGS])
            warnings.append(f"unknown parameter {item!r} is ignored{hint}")
            continue
        if word in _PARAM_NO_EFFECT:
            warnings.append(f"{word} has no effect in jobcompd: {_PARAM_NO_EFFECT[word]}")

    flush_timeout = _int_param(
        values,
        "flush_timeout",
        500,
        -1,
        errors,
        "-1 (wait forever), 0 (do not wait) or milliseconds",
    )
    poll_interval = _int_param(values, "poll_interval", 2, 0, errors, "seconds, 0 or more")
    if poll_interval == 0 and "poll_interval" in values:
        warnings.append("poll_interval=0 serves delivery reports without pausing (busy loop)")
    topic = values.get("topic")
    if topic is not None and not _TOPIC_NAME.fullmatch(topic):
        errors.append(f"topic={topic} {_BAD_TOPIC}" if topic else "topic= needs a topic name")
        topic = None
    params = JobCompParams(
        flush_timeout=flush_timeout,
        poll_interval=poll_interval,
        requeue_on_msg_timeout="requeue_on_msg_timeout" in flags,
        topic=topic,
    )
    return params, errors, warnings
