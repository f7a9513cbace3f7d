"""Settings: defaults, ``conf/settings.toml``-style files, checked once at startup.

Every setting is declared once below with its type and default; a wrong
value stops psd with one line naming the setting.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Optional

from psd.validation import metric_names

#: section -> setting -> (type, default, check or None); the one list of settings.
SCHEMA: dict[str, dict[str, tuple]] = {
    "http": {
        "listen": (str, "tcp:1155:interface=127.0.0.1", None),
        "max_points": (int, 10000, lambda v: 1 <= v <= 100000),
        "max_body_bytes": (int, 8 * 1024 * 1024, lambda v: v >= 1024),
        "request_timeout": (float, 30.0, lambda v: v > 0),
        "max_connections": (int, 4096, lambda v: v >= 1),
        "max_connections_per_address": (int, 1024, lambda v: v >= 1),
        "first_byte_timeout": (float, 10.0, lambda v: v > 0),
        "allowed_hosts": (list, [], lambda v: all(isinstance(h, str) and h and " " not in h for h in v)),
        "token": (str, "", None),
        "token_file": (str, "", None),
        "read_token": (str, "", None),
        "access_log": (bool, True, None),
    },
    "redis": {
        "url": (str, "embedded", None),
        "prefix": (str, "hz", lambda v: v and "{" not in v and "}" not in v),
        "count_prefix": (str, "c", lambda v: v and "{" not in v and "}" not in v),
        "reply_timeout": (float, 5.0, lambda v: v > 0),
    },
    "embedded": {
        "data_dir": (str, "var/psd", lambda v: bool(v)),
        "binary": (str, "", None),
    },
    "metrics": {
        "names": (list, ["points", "steps", "distance", "calories"], lambda v: bool(v) and all(isinstance(n, str) for n in v)),
    },
    "writer": {
        "window_ms": (float, 5.0, lambda v: 0 <= v <= 1000),
        "max_batch_points": (int, 5000, lambda v: v >= 1),
        "max_script_increments": (int, 2000, lambda v: v >= 10),
        "max_queue_points": (int, 200000, lambda v: v >= 1),
        "max_in_flight": (int, 2, lambda v: v >= 1),
        "dedupe_ttl": (int, 86400, lambda v: v >= 1),
    },
    "nsq": {
        "nsqd_tcp_addresses": (list, [], lambda v: all(isinstance(a, str) and _host_port(a) for a in v)),
        "lookupd_http_addresses": (list, [], lambda v: all(isinstance(a, str) and a and " " not in a for a in v)),
        "topic": (str, "psd", lambda v: bool(v)),
        "channel": (str, "psd", lambda v: bool(v)),
        "max_in_flight": (int, 200, lambda v: 1 <= v <= 100000),
        "max_attempts": (int, 20, lambda v: v >= 0),
        "dead_letter_topic": (str, "psd_dead", lambda v: bool(v)),
        "msg_timeout": (float, 60.0, lambda v: v >= 1),
        "heartbeat_interval": (float, 30.0, lambda v: 1 <= v <= 60),
        "lookupd_poll_interval": (float, 60.0, lambda v: v > 0),
        "backoff_max": (float, 60.0, lambda v: v > 0),
        "stop_timeout": (float, 30.0, lambda v: v > 0),
    },
    "query": {
        "max_uids": (int, 10000, lambda v: v >= 1),
        "max_reads_per_call": (int, 2000, lambda v: v >= 1),
    },
}


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


class SettingsError(ValueError):
    """One line that names the setting and what is wrong with it."""


class Settings:
    """Checked settings, read as ``settings.section["name"]``."""

    def __init__(self, values: dict[str, dict[str, Any]]):
        self._values = values
        for section in values:
            setattr(self, section, values[section])

    def set(self, section: str, name: str, value: Any) -> None:
        """Override one setting (a command-line option), checked like the file."""
        self._values[section][name] = _checked(section, name, value)


def load(path: Optional[str] = None) -> Settings:
    """Defaults, overridden by the TOML file at ``path`` if given."""
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise SettingsError(f"cannot read config {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"config {path} is not valid TOML: {e}") from None
    values = {}
    for section, settings in SCHEMA.items():
        given = data.pop(section, {})
        if not isinstance(given, dict):
            raise SettingsError(f"settings: [{section}] must be a table")
        values[section] = {name: _checked(section, name, given.pop(name, default)) for name, (_, default, _) in settings.items()}
        if given:
            raise SettingsError(f"settings: unknown setting [{section}] {sorted(given)[0]}")
    if data:
        raise SettingsError(f"settings: unknown section [{sorted(data)[0]}]")
    return Settings(values)


def _checked(section: str, name: str, value: Any) -> Any:
    kind, _, check = SCHEMA[section][name]
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise SettingsError(f"settings: [{section}] {name} must be of type {kind.__name__}, not {value!r}")
    if check is not None and not check(value):
        raise SettingsError(f"settings: [{section}] {name} has an invalid value {value!r}")
    if (section, name) == ("metrics", "names"):
        try:
            metric_names(value)
        except ValueError as e:
            raise SettingsError(f"settings: [metrics] names: {e}") from None
    return value
