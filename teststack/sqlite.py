"""The release-phase tests' real database: a SQLite file on the release's volume.

The demo migrates it (`migrate`, the release phase's command) and its health reads it, through
Debian's SQLite JDBC driver (libxerial-sqlite-jdbc-java, merged into demo/build/libs/app-sqlite.jar
by demo/build.sh) and its JNI library (libxerial-sqlite-jdbc-jni, which links the system
libsqlite3). The shared pipeline/jre:17 has neither java.sql nor those libraries, so the release is
built on a variant of its own, pipeline/jre-sql:17 (docker/jre/build.sh with JRE_MODULES and
JRE_LIBS; built here when missing or different, so a fresh machine's CI builds it). The tests read
the schema back from the file itself with Python's sqlite3 (the same system libsqlite3).
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any, List, Tuple

from teststack.realstack import REPO

JRE_IMAGE = "pipeline/jre-sql:17"
JRE_MODULES = "java.base,java.logging,java.management,jdk.httpserver,jdk.unsupported,java.sql"
JNI_LIBRARY = "/usr/lib/x86_64-linux-gnu/jni/libsqlitejdbc.so"   # libxerial-sqlite-jdbc-jni
JAR = "build/libs/app-sqlite.jar"   # relative to demo/, the build context
DATABASE_FILE = "app.db"   # the demo's default DATABASE_URL is jdbc:sqlite:/data/app.db


def build_jre() -> str:
    """pipeline/jre-sql:17 (the script skips it when an image of the same modules and libraries
    exists); the demo's jar with the driver must be there too. Returns the BUILD_ARGS to use."""
    for path, package in ((JNI_LIBRARY, "libxerial-sqlite-jdbc-jni"),
                          (REPO / "demo" / JAR, "libxerial-sqlite-jdbc-java (then demo/build.sh)")):
        assert Path(path).is_file(), f"{path} missing: install {package} (scripts/stack.sh start does)"
    result = subprocess.run(["bash", str(REPO / "docker" / "jre" / "build.sh")], capture_output=True, text=True,
                            env={**os.environ, "JRE_IMAGE": JRE_IMAGE, "JRE_MODULES": JRE_MODULES,
                                 "JRE_LIBS": JNI_LIBRARY}, timeout=600)
    assert result.returncode == 0, f"docker/jre/build.sh for {JRE_IMAGE}:\n{result.stdout}{result.stderr}"
    return f"BASE_IMAGE={JRE_IMAGE} JAR={JAR}"


def _query(database: Path, sql: str) -> List[Tuple[Any, ...]]:
    # Read-write on purpose: a migration killed mid-transaction leaves a journal that the next
    # connection rolls back, as the next release's would.
    connection = sqlite3.connect(database / DATABASE_FILE)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def tables(database: Path) -> List[str]:
    """The database's tables, sorted; [] while the file is not there."""
    if not (database / DATABASE_FILE).exists():
        return []
    return [name for (name,) in _query(database, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


def versions(database: Path) -> List[Tuple[int, str]]:
    """schema_version's rows: (version, the release whose migration applied it), in order."""
    return [(version, release) for version, release in
            _query(database, "SELECT version, release FROM schema_version ORDER BY version")]


def columns(database: Path, table: str) -> List[str]:
    return [row[1] for row in _query(database, f"PRAGMA table_info({table})")]
