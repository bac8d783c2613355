"""Audit the lock files for known vulnerabilities: ``python requirements/audit.py LOCK...`` (``make audit``).

Runs pip-audit (PyPA) on the locked set without installing it (``--disable-pip``: every requirement is pinned
with hashes), against PyPI's vulnerability data (the Python Packaging Advisory Database and GitHub's
advisories, as OSV records, served by PyPI's JSON API). Exit status 1 if any locked package has a known
vulnerability that is not withdrawn, 2 if the audit could not run; each finding is printed with its fixed
versions.

Where pip-audit cannot read a package's per-release record (``/pypi/<name>/<version>/json``: some networks
let only the project endpoint through, and pip-audit then skips the package), the package is checked against
the project endpoint ``/pypi/<name>/json``, whose ``vulnerabilities`` are those of the newest release: exact
for a package locked at its newest release (what ``make lock`` resolves to unless a bound holds it back), so
any finding there fails the audit too. A package locked below its newest release that neither source could
audit is listed as unaudited (no failure: only a fresh ``make lock`` or another network can check it).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PYPI_PROJECT_JSON = "https://pypi.org/pypi/{name}/json"
TIMEOUT_S = 30
#: Project records fetched at once.
FETCHERS = 8
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(locks: list[str]) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of pip-compile/uv lock files."""
    pinned: dict[str, str] = {}
    for lock in locks:
        with open(lock, encoding="utf-8") as file:
            for name, version in _PIN.findall(file.read()):
                pinned[canonical(name)] = version
    return pinned


def pip_audit(locks: list[str]) -> dict:
    """pip-audit's JSON report of the locks:
    ``{"dependencies": [{"name", "version", "vulns"} | {"name", "skip_reason"}]}``. Raises RuntimeError if
    pip-audit failed for another reason than finding vulnerabilities."""
    command = [sys.executable, "-m", "pip_audit", "--disable-pip", "--progress-spinner", "off", "-f", "json"]
    for lock in locks:
        command += ["-r", lock]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"pip-audit failed ({result.returncode}): {result.stderr.strip()}") from None


def newest_release_vulnerabilities(name: str) -> tuple[str, list[dict]]:
    """The newest release of ``name`` on PyPI and its vulnerabilities that are not withdrawn (PyPI JSON API,
    "Get a project": ``info.version`` and ``vulnerabilities``)."""
    with urllib.request.urlopen(PYPI_PROJECT_JSON.format(name=name), timeout=TIMEOUT_S) as response:
        project = json.load(response)
    return project["info"]["version"], [
        v for v in project.get("vulnerabilities", []) if not v.get("withdrawn")
    ]


def _newest_or_error(name: str) -> tuple[str, list[dict]] | Exception:
    try:
        return newest_release_vulnerabilities(name)
    except (urllib.error.URLError, TimeoutError, KeyError, ValueError) as exc:
        return exc


def main(locks: list[str]) -> int:
    try:
        report = pip_audit(locks)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    pinned = pins(locks)
    findings: list[str] = []
    unaudited: list[str] = []
    audited = by_project_endpoint = 0
    skipped = [d["name"] for d in report.get("dependencies", []) if "skip_reason" in d]
    with ThreadPoolExecutor(FETCHERS) as pool:
        newest_records = dict(zip(skipped, pool.map(_newest_or_error, skipped), strict=True))
    for dependency in report.get("dependencies", []):
        name = dependency["name"]
        version = dependency.get("version") or pinned.get(canonical(name))
        if "skip_reason" not in dependency:
            audited += 1
            for vuln in dependency.get("vulns", []):
                fixed = ", ".join(vuln.get("fix_versions", [])) or "none yet"
                findings.append(f"{name} {version}: {vuln['id']} (fixed in {fixed})")
            continue
        if version is None:  # not a pinned requirement: nothing a lock file holds
            unaudited.append(f"{name}: {dependency['skip_reason']}")
            continue
        record = newest_records[name]
        if isinstance(record, Exception):
            unaudited.append(f"{name} {version}: {record}")
            continue
        newest, vulns = record
        if newest != version:
            unaudited.append(f"{name} {version} (newest {newest}): no per-release record reachable")
            continue
        audited += 1
        by_project_endpoint += 1
        for vuln in vulns:
            fixed = ", ".join(vuln.get("fixed_in", [])) or "none yet"
            findings.append(f"{name} {version}: {vuln['id']} (fixed in {fixed})")
    print(
        f"audited {audited} locked packages ({by_project_endpoint} through PyPI's project endpoint); "
        f"{len(findings)} known vulnerabilities; {len(unaudited)} unaudited"
    )
    for line in unaudited:
        print(f"  unaudited: {line}")
    for line in findings:
        print(f"  VULNERABLE: {line}")
    return 1 if findings else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
