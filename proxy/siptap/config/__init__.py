"""siptap's configuration: TOML in, frozen dataclasses out, validated in this layer alone.

Every problem is reported as a :class:`~siptap.errors.ConfigError` naming the file and the
dotted key path (``route[0].customer.key``). The package holds one job per module:

- :mod:`~siptap.config.loader`: the generic TOML-to-dataclass loader (types, metadata, paths);
- :mod:`~siptap.config.routes`: a route's listen addresses, TLS legs, cores and limits;
- :mod:`~siptap.config.listeners`: routes that share a listen address, and what they must agree on;
- :mod:`~siptap.config.allow`: parsing the customer allow-list (matching it is :mod:`siptap.tls.identity`'s);
- :mod:`~siptap.config.mirror`: the ``[mirror]`` section;
- :mod:`~siptap.config.config_file`: the top level (:class:`Config`) and :func:`load_config`.

Nothing here imports a layer above (tls, relay, mirror, app): loading and checking a config
needs only the standard library, :mod:`siptap.addresses` and :mod:`siptap.errors`. Every
public name is importable from ``siptap.config`` itself.
"""

from siptap.addresses import Endpoint
from siptap.config.allow import AllowEntries, parse_allow_entries
from siptap.config.config_file import (
    MAX_WORKERS,
    METRICS_PORT,
    Config,
    LogSettings,
    MetricsSettings,
    load_config,
    parse_config,
    usable_cpus,
)
from siptap.config.loader import Loader
from siptap.config.mirror import (
    HEP_COLLECTOR_PORT,
    HepSinkSettings,
    JsonlSinkSettings,
    KeylogFileSettings,
    MirrorSettings,
    PcapSettings,
    SrtpKeysFileSettings,
)
from siptap.config.routes import (
    DEFAULT_SIP_TLS_PORT,
    MODERN_CIPHERS,
    RSA_KEX_CIPHERS,
    SNGREP_CIPHERS,
    TLS_VERSIONS,
    ClientTlsSettings,
    Limits,
    ReverseRoute,
    Route,
    ServerTlsSettings,
    Upstream,
)

__all__ = [
    "DEFAULT_SIP_TLS_PORT",
    "HEP_COLLECTOR_PORT",
    "MAX_WORKERS",
    "METRICS_PORT",
    "MODERN_CIPHERS",
    "RSA_KEX_CIPHERS",
    "SNGREP_CIPHERS",
    "TLS_VERSIONS",
    "AllowEntries",
    "ClientTlsSettings",
    "Config",
    "Endpoint",
    "HepSinkSettings",
    "JsonlSinkSettings",
    "KeylogFileSettings",
    "Limits",
    "Loader",
    "LogSettings",
    "MetricsSettings",
    "MirrorSettings",
    "PcapSettings",
    "ReverseRoute",
    "Route",
    "ServerTlsSettings",
    "SrtpKeysFileSettings",
    "Upstream",
    "load_config",
    "parse_allow_entries",
    "parse_config",
    "usable_cpus",
]
