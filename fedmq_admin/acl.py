"""The broker ACL, scoped to one federation: the shipped rules (``broker_config/acl.conf``) rendered.

``broker_config/acl.conf`` is written for a broker that carries one federation, ``demo`` (the demo's and
the compose file's default): its ``pattern`` lines name ``fl/demo/`` and let every account write only its
own exact-depth topics there. Patterns apply to *every* account, though, so two federations' pattern
files on one broker would let a device of federation A write under federation B. What ``fedmq init``,
``enroll`` and ``revoke`` render instead (:func:`per_account`) has no pattern at all: each account gets
its own ``user`` block, with its federation's name and its own id written out, so the rendered files
of several federations can be concatenated on one shared broker (with distinct aggregator account
names) and a device still reaches only its own federation. One source states the rules: both renders
are derived from the shipped file, line by line.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from shared.errors import ConfigError
from shared.topics import check_id

#: The federation the shipped ``broker_config/acl.conf`` is written for.
SHIPPED_FEDERATION = "demo"
AGGREGATOR = "aggregator"


def shipped() -> str:
    """The shipped ACL (``broker_config/acl.conf``), found in the source tree or the installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "broker_config" / "acl.conf",):
        if candidate.exists():
            return candidate.read_text()
    raise ConfigError("acl", "broker_config/acl.conf is missing from this installation")


def scoped(federation: str, *, aggregator: str = AGGREGATOR, text: str | None = None) -> str:
    """The shipped rules for a one-federation broker of ``federation`` (patterns kept)."""
    check_id(federation, "federation")
    check_id(aggregator, "aggregator account")
    rules = shipped() if text is None else text
    rules = rules.replace(f"fl/{SHIPPED_FEDERATION}/", f"fl/{federation}/")
    return rules.replace(f"\nuser {AGGREGATOR}\n", f"\nuser {aggregator}\n")


def per_account(
    federation: str, devices: Iterable[str], *, aggregator: str = AGGREGATOR, text: str | None = None
) -> str:
    """The shipped rules with every ``pattern`` line written out per device account (no pattern left):
    safe to concatenate with other federations' renders on one broker."""
    lines = scoped(federation, aggregator=aggregator, text=text).splitlines()
    patterns = [line.split(None, 2)[1:] for line in lines if line.startswith("pattern ")]
    kept = [line for line in lines if not line.startswith("pattern ")]
    out = [*kept, "", f"# Device accounts of federation {federation}: the pattern rules, one block each."]
    for device in sorted(set(devices)):
        check_id(device, "device")
        if device == aggregator:
            raise ConfigError("device", f"{device!r} is the aggregator's account")
        out.append(f"user {device}")
        out += [f"topic {access} {topic.replace('%u', device).replace('%c', device)}"
                for access, topic in patterns]  # fmt: skip
    return "\n".join(out) + "\n"
