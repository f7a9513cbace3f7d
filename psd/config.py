"""Settings: defaults, ``conf/settings.toml``-style files, checked once at startup.

Every setting is declared once below with its type and default; a wrong
value stops psd with one line naming the setting.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any, Optional

from psd.cost import DEFAULT_MAX_READS
from psd.validation import metric_names

class Check:
    """A setting's check and the words that say what it accepts (the error names the valid range)."""

    def __init__(self, accepts, description: str):
        self.accepts = accepts
        self.description = description

    def __call__(self, value) -> bool:
        return bool(self.accepts(value))


def between(low, high) -> Check:
    return Check(lambda v: low <= v <= high, f"from {low} to {high}")


def at_least(low) -> Check:
    return Check(lambda v: v >= low, f"at least {low}")


POSITIVE = Check(lambda v: v > 0, "more than 0")
NOT_EMPTY = Check(bool, "not empty")
KEY_PREFIX = Check(lambda v: v and "{" not in v and "}" not in v, "a non-empty string without { or }")

#: section -> setting -> (type, default, check or None); the one list of settings.
SCHEMA: dict[str, dict[str, tuple]] = {
    "http": {
        "listen": (str, "tcp:1155:interface=127.0.0.1", None),
        "max_points": (int, 10000, between(1, 100000)),
        "max_body_bytes": (int, 8 * 1024 * 1024, at_least(1024)),
        "request_timeout": (float, 30.0, POSITIVE),
        "max_connections": (int, 4096, at_least(1)),
        "max_connections_per_address": (int, 1024, at_least(1)),
        "first_byte_timeout": (float, 10.0, POSITIVE),
        "allowed_hosts": (list, [], Check(lambda v: all(isinstance(h, str) and h and " " not in h for h in v),
                                          "a list of host names (HOST or HOST:PORT)")),
        "token": (str, "", None),
        "token_file": (str, "", None),
        "read_token": (str, "", None),
        "access_log": (bool, True, None),
    },
    "redis": {
        "url": (str, "embedded", None),
        "prefix": (str, "hz", KEY_PREFIX),
        "count_prefix": (str, "c", KEY_PREFIX),
        "reply_timeout": (float, 5.0, POSITIVE),
        "password_file": (str, "", None),
        "tls_ca_file": (str, "", None),
        "tls_cert_file": (str, "", None),
        "tls_key_file": (str, "", None),
        "tls_server_name": (str, "", None),
    },
    "embedded": {
        "data_dir": (str, "var/psd", NOT_EMPTY),
        "binary": (str, "", None),
    },
    "metrics": {
        "names": (list, ["points", "steps", "distance", "calories"],
                  Check(lambda v: bool(v) and all(isinstance(n, str) for n in v), "a non-empty list of names")),
    },
    "writer": {
        "window_ms": (float, 5.0, between(0, 1000)),
        "max_batch_points": (int, 5000, at_least(1)),
        "max_script_increments": (int, 2000, at_least(10)),
        "max_script_ms": (float, 20.0, POSITIVE),
        "max_queue_points": (int, 200000, at_least(1)),
        "max_in_flight": (int, 2, at_least(1)),
        "dedupe_ttl": (int, 86400, at_least(1)),
        "set_total_history": (int, 1000, between(1, 100000)),
        "set_total_ttl": (int, 30 * 86400, at_least(0)),
    },
    "nsq": {
        "nsqd_tcp_addresses": (list, [], Check(lambda v: all(isinstance(a, str) and host_port(a) for a in v),
                                               'a list of "HOST:PORT" strings')),
        "lookupd_http_addresses": (list, [], Check(lambda v: all(isinstance(a, str) and a and " " not in a for a in v),
                                                   "a list of addresses (HOST:PORT or URL)")),
        "topic": (str, "psd", NOT_EMPTY),
        "channel": (str, "psd", NOT_EMPTY),
        "max_in_flight": (int, 200, between(1, 100000)),
        "max_attempts": (int, 20, at_least(0)),
        "dead_letter_topic": (str, "psd_dead", NOT_EMPTY),
        "msg_timeout": (float, 60.0, at_least(1)),
        "heartbeat_interval": (float, 30.0, between(1, 60)),
        "lookupd_poll_interval": (float, 60.0, POSITIVE),
        "backoff_max": (float, 60.0, POSITIVE),
        "stop_timeout": (float, 30.0, POSITIVE),
        "tls": (bool, False, None),
        "tls_ca_file": (str, "", None),
        "tls_server_name": (str, "", None),
        "tls_cert_file": (str, "", None),
        "tls_key_file": (str, "", None),
        "auth_secret": (str, "", None),
        "auth_secret_file": (str, "", None),
    },
    "query": {
        "max_uids": (int, 10000, at_least(1)),
        "max_reads_per_call": (int, 2000, at_least(1)),
        "max_reads_per_request": (int, DEFAULT_MAX_READS, at_least(1)),
    },
}


def host_port(address: str) -> bool:
    """``HOST:PORT`` with a port in 1..65535."""
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
        accepted = f": it must be {check.description}" if isinstance(check, Check) else ""
        raise SettingsError(f"settings: [{section}] {name} has an invalid value {value!r}{accepted}")
    if (section, name) == ("metrics", "names"):
        try:
            metric_names(value)
        except ValueError as e:
            raise SettingsError(f"settings: [metrics] names: {e}") from None
    return value


def read_setting_file(section: str, setting: str, path: str) -> bytes:
    """The contents of a file a setting names (a CA, a key, a secret): one line naming it if unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SettingsError(f"settings: [{section}] {setting} {path!r}: cannot read it: {e.strerror}") from None


def read_secret_file(section: str, setting: str, path: str) -> str:
    """The first line of the file a secret setting names (the secret stays out of the config); not empty."""
    lines = read_setting_file(section, setting, path).decode("utf-8", "replace").splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise SettingsError(f"settings: [{section}] {setting} is empty")
    return secret


def example_path() -> Path:
    """``conf/settings.toml.dist``: installed as the package ``psd.conf``, in a checkout beside ``psd/``."""
    installed = Path(__file__).parent / "conf" / "settings.toml.dist"
    return installed if installed.is_file() else Path(__file__).parent.parent / "conf" / "settings.toml.dist"


def main(argv: list) -> int:
    """``python -m psd.config --example``: print the example settings file (every setting, its default)."""
    if argv[1:] != ["--example"]:
        print("usage: python -m psd.config --example   (prints a settings file with every setting)", file=sys.stderr)
        return 2
    sys.stdout.write(example_path().read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
