"""wg-quick configuration files: parse, check, write back, strip to `wg setconf`.

The format is wg-quick(8)'s, unchanged: an [Interface] section and any number
of [Peer] sections, `Key = Value` lines, keys matched case-insensitively,
everything from `#` to the end of a line a comment (inside values too, as
wg-quick and wg do), blank lines ignored.

    model.py   the dataclasses (Config, InterfaceConfig, PeerConfig), ConfigError
    parse.py   text -> Config, every mistake with its file, line and key
    write.py   Config -> text that parses back to an equal Config
    load.py    a private file on disk -> Config (the only I/O of this package)

Rules kept here:
- parsing is pure: text in, dataclasses out. No name is resolved (an Endpoint
  stays (host, port); tunnel/resolve.py does the I/O, for the daemons to
  call) and no file is touched except by `load_config`.
- every mistake raises ConfigError naming the file, the line and the key;
  messages never contain key material: a bad key is described, not echoed,
  and any value (or key name) holding a run of 20 or more base64
  characters is described instead of quoted (`quote_value`): a key pasted
  on the wrong line must not reach stderr or the journal.
- repeatable keys (Address, DNS, AllowedIPs, the hooks) accumulate in order;
  any other key given twice keeps the last value, as wg-quick does, except a
  second PublicKey in one [Peer], which is almost surely a lost [Peer] line.
- unknown keys are errors, except our own extensions: the keys listed in
  InterfaceConfig.EXTENSION_KEYS / PeerConfig.EXTENSION_KEYS (wg-quick would
  pass such keys to `wg`, which refuses them, so files using them are ours).
  Their raw values land in `.extensions[CanonicalName]` (a list, in order).
  A comment line `# Name = alice` inside a [Peer] names that peer, and
  `# FailoverEndpoints = HOST:PORT, ...` lists where else it answers (tried
  after its Endpoint, which it requires: tunnel/failover.py).
- `Config.to_text()` writes a file that parses back to an equal Config;
  `Config.strip_wg_quick()` keeps only what `wg setconf` accepts.
"""

from .load import interface_name_from_path, load_config
from .model import MTU_MAX, MTU_MIN_IPV4, MTU_MIN_IPV6, Config, ConfigError, InterfaceConfig, PeerConfig
from .parse import parse_config, quote_value

__all__ = [
    "ConfigError",
    "InterfaceConfig",
    "PeerConfig",
    "Config",
    "parse_config",
    "quote_value",
    "load_config",
    "interface_name_from_path",
    "MTU_MIN_IPV4",
    "MTU_MIN_IPV6",
    "MTU_MAX",
]
