#!/usr/bin/env bash
# Build the demo service into demo/build/libs/app.jar (an executable jar), and, where Debian's
# SQLite JDBC driver is installed (libxerial-sqlite-jdbc-java), build/libs/app-sqlite.jar: the
# same classes with the driver's merged in, as a Spring Boot jar carries its driver. That one
# runs on pipeline/jre-sql:17 (java.sql and the driver's JNI library: docker/jre/build.sh with
# JRE_MODULES and JRE_LIBS); app.jar needs neither.
#
# Only javac and jar from a JDK 17 are needed; no Gradle/Maven, since the machines
# reach no Maven repository. Skips the build when the jar is newer than every
# source file, unless FORCE=1.
#
# Env: JAVA_HOME (default: /usr/lib/jvm/java-17-openjdk-amd64 if present, else the
#      javac on PATH), FORCE=1 to rebuild, SQLITE_JDBC_JAR (default
#      /usr/share/java/sqlite-jdbc.jar).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/src"
out="$here/build"
jar_path="$out/libs/app.jar"
sqlite_jar_path="$out/libs/app-sqlite.jar"
driver="${SQLITE_JDBC_JAR:-/usr/share/java/sqlite-jdbc.jar}"

# Prefer JDK 17 explicitly: the machine may also carry a newer JDK, and classes compiled
# for it would not load on the JDK 17 runtime image.
if [[ -z "${JAVA_HOME:-}" && -x /usr/lib/jvm/java-17-openjdk-amd64/bin/javac ]]; then
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
fi
if [[ -n "${JAVA_HOME:-}" ]]; then
    javac="$JAVA_HOME/bin/javac"
    jar="$JAVA_HOME/bin/jar"
else
    javac="$(command -v javac || true)"
    jar="$(command -v jar || true)"
fi
if [[ ! -x "$javac" || ! -x "$jar" ]]; then
    echo "demo/build.sh: javac/jar not found (set JAVA_HOME to a JDK 17)" >&2
    exit 1
fi

if [[ "${FORCE:-0}" != 1 && -f "$jar_path" ]] &&
    [[ ! -f "$driver" || -f "$sqlite_jar_path" ]] &&
    [[ -z "$(find "$src" "$here/build.sh" -newer "$jar_path" -print -quit)" ]]; then
    echo "demo/build.sh: $jar_path is up to date"
    exit 0
fi

rm -rf "$out/classes" "$out/sqlite-classes"
mkdir -p "$out/classes" "$out/libs"

mapfile -t sources < <(find "$src" -name '*.java' | sort)
# --release 17 pins the class file version and the API even if javac is newer.
"$javac" --release 17 -encoding UTF-8 -Xlint:all -Werror -d "$out/classes" "${sources[@]}"

# Write to a temp file then rename, so a concurrent `docker build` never sees half a jar.
"$jar" --create --file "$jar_path.tmp" --main-class demo.Demo -C "$out/classes" .
if [[ -f "$driver" ]]; then
    # The driver's classes and its META-INF/services entry (DriverManager finds it there); not
    # its manifest, and not its module-info (this jar is on the class path, not a module).
    mkdir -p "$out/sqlite-classes"
    (cd "$out/sqlite-classes" && "$jar" --extract --file "$driver")
    rm -rf "$out/sqlite-classes/META-INF/MANIFEST.MF" "$out/sqlite-classes/META-INF/versions"
    "$jar" --create --file "$sqlite_jar_path.tmp" --main-class demo.Demo -C "$out/classes" . \
        -C "$out/sqlite-classes" .
    mv -f "$sqlite_jar_path.tmp" "$sqlite_jar_path"
    echo "demo/build.sh: built $sqlite_jar_path (with $driver)"
else
    rm -f "$sqlite_jar_path"
fi
mv -f "$jar_path.tmp" "$jar_path"
echo "demo/build.sh: built $jar_path"
