#!/usr/bin/env python3
"""Build the Spring Boot-layout test service: demo.Demo with 35 MB of real dependency jars.

    python3 demo/layered/build.py --out build/libs/app.jar [--change TEXT] [--layers standard|custom|none]
                                  [--time EPOCH_SECONDS] [--no-launcher]

The jar is laid out as Spring Boot's `bootJar` lays it out (BOOT-INF/classes, BOOT-INF/lib/*.jar
stored uncompressed, BOOT-INF/classpath.idx, BOOT-INF/layers.idx), with a small launcher of our
own (demo/layered/launcher) in place of Spring Boot's loader, which is not installable here. The
dependencies are Debian's packaged jars (scripts/stack.sh installs them): Tomcat embed, Jackson,
Guava, Bouncy Castle, Commons Math and Lang, ICU4J. `--change` goes into one class of the
application (demo.Change), so two builds with different texts differ in that class alone.
`--no-launcher` leaves the launcher out (and Main-Class from the manifest): only
Start-Class says what to run, as for a jar whose loader a layered image does not use.
`--layers custom` writes a layers.idx with custom layers; `none` writes no layers.idx. Every entry
gets the build's time (`--time`, default now), as a fresh build's jar has: two builds differ in
their entries' times even where the content is the same.
Only javac from a JDK 17 and Python are needed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_SOURCE = HERE.parent / "src" / "demo" / "Demo.java"
LAUNCHER_SOURCE = HERE / "launcher" / "Launcher.java"
JAVA_DIR = Path("/usr/share/java")
# name in BOOT-INF/lib -> the Debian package that ships it under /usr/share/java
LIBS = {
    "tomcat-embed-core.jar": ("tomcat10-embed-core.jar", "libtomcat10-embed-java"),
    "jackson-databind.jar": ("jackson-databind.jar", "libjackson2-databind-java"),
    "jackson-core.jar": ("jackson-core.jar", "libjackson2-core-java"),
    "jackson-annotations.jar": ("jackson-annotations.jar", "libjackson2-annotations-java"),
    "guava.jar": ("guava.jar", "libguava-java"),
    "bcprov.jar": ("bcprov.jar", "libbcprov-java"),
    "commons-math3.jar": ("commons-math3.jar", "libcommons-math3-java"),
    "commons-lang3.jar": ("commons-lang3.jar", "libcommons-lang3-java"),
    "icu4j.jar": ("icu4j.jar", "libicu4j-java"),
}
STANDARD_LAYERS = """\
- "dependencies":
  - "BOOT-INF/lib/"
- "spring-boot-loader":
  - "launcher/"
- "snapshot-dependencies":
- "application":
  - "BOOT-INF/classes/"
  - "BOOT-INF/classpath.idx"
  - "BOOT-INF/layers.idx"
  - "META-INF/"
"""
# Custom layers, as Spring Boot's `layered { }` block writes them: the two largest dependencies
# apart, the configuration apart from the code (an empty snapshot-dependencies layer left in).
CUSTOM_LAYERS = """\
- "big-dependencies":
  - "BOOT-INF/lib/icu4j.jar"
  - "BOOT-INF/lib/bcprov.jar"
- "dependencies":
  - "BOOT-INF/lib/"
- "spring-boot-loader":
  - "launcher/"
- "snapshot-dependencies":
- "config":
  - "BOOT-INF/classes/application.properties"
- "application":
  - "BOOT-INF/classes/"
  - "BOOT-INF/classpath.idx"
  - "BOOT-INF/layers.idx"
  - "META-INF/"
"""
MANIFEST = ("Manifest-Version: 1.0\r\nMain-Class: launcher.Launcher\r\nStart-Class: demo.Demo\r\n"
            "Spring-Boot-Classes: BOOT-INF/classes/\r\nSpring-Boot-Lib: BOOT-INF/lib/\r\n"
            "Spring-Boot-Classpath-Index: BOOT-INF/classpath.idx\r\n{layers}\r\n")


def javac() -> str:
    home = os.environ.get("JAVA_HOME") or "/usr/lib/jvm/java-17-openjdk-amd64"
    found = Path(home) / "bin" / "javac"
    return str(found) if found.is_file() else (shutil.which("javac") or "javac")


def build(out: Path, change: str, layers: str, when: float, launcher: bool = True) -> None:
    missing = [f"{source} ({package})" for source, package in LIBS.values() if not (JAVA_DIR / source).is_file()]
    if missing:
        sys.exit(f"demo/layered/build.py: missing {', '.join(missing)}: run scripts/stack.sh install")
    with tempfile.TemporaryDirectory(prefix="layered-demo-") as work:
        src, classes = Path(work) / "src", Path(work) / "classes"
        (src / "demo").mkdir(parents=True)
        (src / "demo" / "Change.java").write_text(
            "package demo;\n\n/** The one class a code-only release changes. */\n"
            f"final class Change {{\n    static final String TEXT = {change!r};\n\n"
            "    private Change() {\n    }\n}\n".replace("'", '"'))
        subprocess.run([javac(), "--release", "17", "-encoding", "UTF-8", "-d", str(classes), str(DEMO_SOURCE),
                        str(LAUNCHER_SOURCE), str(src / "demo" / "Change.java")], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".tmp")
        index = {"standard": STANDARD_LAYERS, "custom": CUSTOM_LAYERS, "none": None}[layers]
        manifest = MANIFEST.format(layers="Spring-Boot-Layers-Index: BOOT-INF/layers.idx\r\n" if index else "")
        if not launcher:
            manifest = manifest.replace("Main-Class: launcher.Launcher\r\n", "")
        stamp = time.localtime(when)[:6]

        def put(name: str, data: bytes, compress: int = zipfile.ZIP_DEFLATED) -> None:
            info = zipfile.ZipInfo(name, stamp)
            info.compress_type = compress
            info.external_attr = 0o644 << 16
            jar.writestr(info, data)

        with zipfile.ZipFile(partial, "w") as jar:
            put("META-INF/MANIFEST.MF", manifest.encode())
            for path in sorted((classes / "launcher").rglob("*.class")) if launcher else ():
                put(f"launcher/{path.name}", path.read_bytes())
            for path in sorted((classes / "demo").rglob("*.class")):
                put(f"BOOT-INF/classes/demo/{path.name}", path.read_bytes())
            put("BOOT-INF/classes/application.properties", b"server.port=8080\n")
            for name, (source, _) in LIBS.items():   # stored, as Spring Boot stores nested jars
                put(f"BOOT-INF/lib/{name}", (JAVA_DIR / source).read_bytes(), zipfile.ZIP_STORED)
            put("BOOT-INF/classpath.idx", "".join(f'- "BOOT-INF/lib/{name}"\n' for name in LIBS).encode())
            if index:
                put("BOOT-INF/layers.idx", index.encode())
        partial.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--change", default="1")
    parser.add_argument("--layers", choices=("standard", "custom", "none"), default="standard")
    parser.add_argument("--time", type=float, default=None, help="the entries' time (default: now)")
    parser.add_argument("--no-launcher", action="store_true", help="no launcher, no Main-Class: Start-Class only")
    args = parser.parse_args()
    build(args.out, args.change, args.layers, time.time() if args.time is None else args.time, not args.no_launcher)


if __name__ == "__main__":
    main()
