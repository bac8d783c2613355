"""The ClickHouse users of compose: ``etl`` (writes and DDL on ``crypto``) and ``analytics`` (SELECT on
``crypto.*`` only, read-only, in a settings profile holding the limits of :class:`etl.sql.SqlLimits`).

``crypto-mesh secrets`` writes :func:`users_xml` as the file ``clickhouse_users.xml``, which compose mounts
into the server's ``users.d`` directory ("Settings of users and roles" of the ClickHouse reference: users
with ``password_sha256_hex``, ``grants``, ``profiles`` with ``constraints``). Only hashes of the passwords
are in it; the passwords reach the ETL in its URL secrets.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

from etl.sql import ANALYTICS_DATABASE, SqlLimits

#: Grants of each user (ClickHouse GRANT statements, applied from users.d).
ETL_GRANTS = (f"GRANT ALL ON {ANALYTICS_DATABASE}.*",)
ANALYTICS_GRANTS = (f"GRANT SELECT ON {ANALYTICS_DATABASE}.*",)


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def analytics_profile_settings(limits: SqlLimits) -> dict[str, str]:
    """Settings of the ``analytics`` profile: ``readonly=2`` (read queries only; the client may still send
    its own limits, within the profile's constraints) and the limits, which are also each setting's
    maximum."""
    return {
        "readonly": "2",
        "max_execution_time": str(limits.max_execution_s),
        "timeout_overflow_mode": "throw",
        "max_memory_usage": str(limits.max_memory_bytes),
        "max_result_rows": str(limits.max_result_rows),
        "max_result_bytes": str(limits.max_result_bytes),
        "result_overflow_mode": "throw",
        "max_rows_to_read": str(limits.max_rows_to_read),
        "read_overflow_mode": "throw",
        "max_threads": str(limits.max_threads),
        "allow_ddl": "0",
        "allow_introspection_functions": "0",
    }


def users_xml(etl_password: str, analytics_password: str, limits: SqlLimits | None = None) -> str:
    """The users.d XML of the two users and the ``analytics`` profile; the ``default`` user is kept for the
    container's health check but only from the container itself (127.0.0.1, ::1) and with no grant beyond
    ``system.one``."""
    limits = limits or SqlLimits()
    root = ET.Element("clickhouse")
    profiles = _sub(root, "profiles")
    profile = _sub(profiles, "analytics")
    settings = analytics_profile_settings(limits)
    for name, value in settings.items():
        _sub(profile, name, value)
    constraints = _sub(profile, "constraints")
    for name, value in settings.items():
        constraint = _sub(constraints, name)
        if name.startswith("max_"):
            _sub(constraint, "max", value)
        else:
            _sub(constraint, "const")
    users = _sub(root, "users")
    for name, password, profile_name, grants in (
        ("etl", etl_password, "default", ETL_GRANTS),
        ("analytics", analytics_password, "analytics", ANALYTICS_GRANTS),
    ):
        user = _sub(users, name)
        _sub(user, "password_sha256_hex", hashlib.sha256(password.encode()).hexdigest())
        _sub(_sub(user, "networks"), "ip", "::/0")
        _sub(user, "profile", profile_name)
        _sub(user, "quota", "default")
        _sub(user, "default_database", ANALYTICS_DATABASE if name == "analytics" else "default")
        grant_list = _sub(user, "grants")
        for grant in grants:
            _sub(grant_list, "query", grant)
    default = _sub(users, "default", None)
    default.set("replace", "replace")
    _sub(default, "no_password", "")
    networks = _sub(default, "networks")
    _sub(networks, "ip", "127.0.0.1")
    _sub(networks, "ip", "::1")
    _sub(default, "profile", "default")
    _sub(default, "quota", "default")
    _sub(_sub(default, "grants"), "query", "GRANT SELECT ON system.one")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


#: The cluster of compose's ``cluster`` profile (clickhouse/cluster.xml; ``ETL_CLICKHOUSE_CLUSTER``).
CLUSTER_NAME = "crypto_cluster"


def cluster_secret_xml(secret: str) -> str:
    """A ``config.d`` fragment giving cluster :data:`CLUSTER_NAME` its inter-server ``secret`` ("Cluster
    secret" of ClickHouse's ``remote_servers`` reference): a replica then accepts a query forwarded by the
    other only with it, and runs it as the initial user, never as ``default``. ClickHouse merges this
    fragment with clickhouse/cluster.xml; ``crypto-mesh secrets`` writes it as ``clickhouse_cluster_secret.xml``,
    which compose mounts into both replicas."""
    root = ET.Element("clickhouse")
    cluster = _sub(_sub(root, "remote_servers"), CLUSTER_NAME)
    _sub(cluster, "secret", secret)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"
