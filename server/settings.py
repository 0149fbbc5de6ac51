"""The aggregator's own settings: where it writes, which databases and which key holder it uses.

None of this is part of the run configuration: Flower sends the run configuration to every
SuperNode, the transparency API publishes it, and `flwr run` used to carry it on its command
line. Database URLs (which may hold a password), the key holder's address and the files holding
its token or key are the aggregator operator's business, so they live in a TOML file named by
`$FEDCHURN_AGGREGATOR_CONFIG` in the environment of the SuperLink (whose ServerApp processes
inherit it). `fedchurn simulate` and `fedchurn deploy` write that file; nothing in it is ever
logged except through `redact_url`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["SETTINGS_ENV", "AggregatorSettings", "redact_url"]

SETTINGS_ENV = "FEDCHURN_AGGREGATOR_CONFIG"


def redact_url(url: str) -> str:
    """A database URL fit for a log or an answer: the password replaced by ***."""
    if not url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


@dataclass(frozen=True)
class AggregatorSettings:
    out_dir: str = ""  # results of the one run this aggregator serves (simulation)
    out_root: str = ""  # results of every run, in <out_root>/<run identity>/ (deployment)
    audit_db: str = ""  # SQLAlchemy URL of the audit database the transparency API serves
    state_db: str = ""  # SQLAlchemy URL of the checkpoints ("" = no crash recovery)
    keyholder_url: str = ""  # the key holder service, https:// only ("" = in-process key holder)
    keyholder_ca: str = ""  # CA certificate the key holder's TLS certificate must chain to
    keyholder_token_file: str = ""  # file holding the bearer token the aggregator presents
    keyholder_key_file: str = ""  # in-process key holder (simulation): its provisioned key
    keyholder_state: str = ""  # in-process key holder: its once-only state (SQLite; "" = memory)
    # A recovery drill: the aggregator kills itself (SIGKILL, like a crash) right after round N's
    # records (checkpoint, outputs, audit) are written; "" = never. Operators rehearse a restart
    # with it; the crash-recovery test uses it to crash at a known point instead of racing a kill.
    crash_after_round: str = ""

    def __post_init__(self) -> None:
        if self.keyholder_url and not self.keyholder_url.startswith("https://"):
            raise ValueError(
                "keyholder_url must be https:// (the aggregator's token and the cohorts' seals "
                f"travel to it); got {self.keyholder_url.split('://')[0]}://"
            )
        if self.crash_after_round and not (
            self.crash_after_round.isdigit() and int(self.crash_after_round) >= 1
        ):
            raise ValueError(f"crash_after_round must be a round number >= 1, got {self.crash_after_round!r}")
        if self.keyholder_url and self.keyholder_key_file:
            raise ValueError("use a key holder service (keyholder_url) or an in-process one, not both")

    @classmethod
    def load(cls, path: Path) -> AggregatorSettings:
        try:
            with path.open("rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"aggregator settings {path}: {e}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"aggregator settings {path}: unknown keys {unknown}; known: {sorted(known)}")
        bad = sorted(k for k, v in doc.items() if not isinstance(v, str))
        if bad:
            raise ValueError(f"aggregator settings {path}: {bad} must be strings")
        return cls(**doc)

    @classmethod
    def from_env(cls) -> AggregatorSettings:
        """The settings named by $FEDCHURN_AGGREGATOR_CONFIG (defaults when it is unset)."""
        path = os.environ.get(SETTINGS_ENV, "")
        return cls.load(Path(path)) if path else cls()

    def write(self, path: Path) -> Path:
        """Write as TOML, readable by its owner only (it may name credentials)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{k} = {_toml_str(v)}" for k, v in asdict(self).items() if v]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def results_dir(self, run_identity: str) -> Path | None:
        if self.out_dir:
            return Path(self.out_dir)
        if self.out_root:
            return Path(self.out_root) / run_identity
        return None

    def public(self) -> dict[str, Any]:
        """What may be shown: database URLs without passwords, whether (not where) secrets exist."""
        return {
            "audit_db": redact_url(self.audit_db),
            "state_db": redact_url(self.state_db),
            "keyholder": self.keyholder_url or ("in-process" if self.keyholder_key_file else "none"),
        }


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
