"""IMAGE_BUILD=layered: the release image made from the jar alone, the way Jib makes it.

A Spring Boot jar names its own layers in BOOT-INF/layers.idx (dependencies, spring-boot-loader,
snapshot-dependencies, application, or custom ones): each becomes one image layer, in that order,
on BASE_IMAGE. A release that changed only code then differs from the last one in its small
application layer alone; the engine keeps, and the registry and every node already have, the
dependency layers. A jar without layers.idx (a plain or shaded jar) is one layer.

Reproducible: every file in a layer has the same time, owner and mode, entries are sorted and no
compression adds a timestamp, so the same jar always gives the same layer digests (and, with the
same labels, the same image id: the config's time is the jar's newest entry's, not the clock's).

The image goes to the engine as a `docker load` tarball. Its manifest lists the base image's
layers by digest but does not carry them: the engine already holds them (it is checked, and the
base pulled if missing), and `docker load` reads a layer only when the engine lacks it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple

from pipeline.core.errors import DeployFailed, SettingsError
from pipeline.core.settings import BuildSettings

log = logging.getLogger("pipeline")

LAYERS_IDX = "BOOT-INF/layers.idx"
APP_DIR = "app"                # the layers are unpacked to /app, the image's working directory
APP_USER = "10001:10001"       # docker/Dockerfile's non-root user (pipeline/jre:17 names it "app")
# Jib's file time: 1970-01-01T00:00:01Z (some tools take 0 for "no time").
FILE_TIME = 1
# As docker/Dockerfile's ENTRYPOINT (it says why each is there).
JVM_OPTIONS = ("-Dsun.net.httpserver.nodelay=true", "-XX:+ExitOnOutOfMemoryError")
PLAIN_LAYER = "jar"            # the one layer of a jar without layers.idx

_HEADER_RE = re.compile(r'^- "([^"]+)":$')
_ENTRY_RE = re.compile(r'^  - "([^"]+)"$')


class ImageApi(Protocol):
    """The few docker SDK low-level calls this needs (docker.APIClient)."""

    def images(self, name: Optional[str] = None) -> List[Dict[str, Any]]: ...

    def pull(self, repository: str, tag: Optional[str] = None, stream: bool = False,
             decode: bool = False) -> Iterable[Dict[str, Any]]: ...

    def inspect_image(self, image: str) -> Dict[str, Any]: ...

    def load_image(self, data: IO[bytes]) -> Iterable[Dict[str, Any]]: ...


# -- pure: what goes where -------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One image layer: a name, and the files it holds as (path in the image, jar entry).
    An entry of "" stands for the whole jar file (the one layer of a plain jar)."""

    name: str
    files: Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class Plan:
    layers: Tuple[Layer, ...]
    entrypoint: Tuple[str, ...]
    note: str = ""             # said once in the log (a jar without layers.idx)


def parse_layers_idx(text: str) -> List[Tuple[str, List[str]]]:
    """BOOT-INF/layers.idx: `- "layer":` lines, each followed by `  - "path"` lines (a path ending
    in / takes everything under it). Raises ValueError naming the line it cannot read."""
    layers: List[Tuple[str, List[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        header, entry = _HEADER_RE.match(line), _ENTRY_RE.match(line)
        if header:
            if any(name == header.group(1) for name, _ in layers):
                raise ValueError(f"line {number}: layer {header.group(1)!r} named twice")
            layers.append((header.group(1), []))
        elif entry and layers:
            layers[-1][1].append(entry.group(1))
        else:
            raise ValueError(f"line {number}: expected '- \"layer\":' or '  - \"path\"', got {line!r}")
    if not layers:
        raise ValueError("names no layer")
    return layers


def layer_of(entry: str, index: Sequence[Tuple[str, Sequence[str]]]) -> Optional[str]:
    """The first layer whose list names the entry, or a directory above it (Spring Boot's rule)."""
    for name, paths in index:
        if any(entry == path or (path.endswith("/") and entry.startswith(path)) for path in paths):
            return name
    return None


def plan(entries: Sequence[str], manifest: Mapping[str, str], index_text: Optional[str],
         jar_name: str) -> Plan:
    """Which jar entry goes to which layer, and how the image starts the app.

    With layers.idx the jar is unpacked into /app, one layer per index layer (an empty one left
    out): the jar's own launcher starts it from there (`java -cp /app Main-Class`, as Spring Boot
    documents for an unpacked jar) when the jar carries it, else `java -cp` its classes and
    libraries with Start-Class, as Jib does. Without, the jar itself is the one layer, run as
    docker/Dockerfile runs it. Raises ValueError on an index the jar does not fit.
    """
    java = ("java",) + JVM_OPTIONS
    if index_text is None:
        return Plan((Layer(PLAIN_LAYER, ((f"{APP_DIR}/app.jar", ""),)),),
                    java + ("-jar", f"/{APP_DIR}/app.jar"),
                    f"{jar_name} has no {LAYERS_IDX}: one image layer, the whole jar")
    index = parse_layers_idx(index_text)
    files: Dict[str, List[Tuple[str, str]]] = {name: [] for name, _ in index}
    for entry in entries:
        if entry.endswith("/"):
            continue   # directories: each layer writes the ones above its files
        name = layer_of(entry, index)
        if name is None:
            raise ValueError(f"{LAYERS_IDX} puts {entry} in no layer")
        files[name].append((f"{APP_DIR}/{entry}", entry))
    layers = tuple(Layer(name, tuple(sorted(files[name]))) for name, _ in index if files[name])
    main, start = manifest.get("Main-Class", ""), manifest.get("Start-Class", "")
    if main and f"{main.replace('.', '/')}.class" in entries:
        return Plan(layers, java + ("-cp", f"/{APP_DIR}", main))
    if start:
        return Plan(layers, java + ("-cp", f"/{APP_DIR}/BOOT-INF/classes:/{APP_DIR}/BOOT-INF/lib/*", start))
    raise ValueError("its manifest names neither a launcher in the jar (Main-Class) nor Start-Class")


def directories(paths: Iterable[str]) -> List[str]:
    """Every directory above the paths (a/b/c -> a, a/b)."""
    found: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        found.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(found)


def image_config(base: Mapping[str, Any], diff_ids: Sequence[str], layers: Sequence[Layer],
                 entrypoint: Sequence[str], labels: Mapping[str, str], port: int, created: str,
                 base_ref: str) -> Dict[str, Any]:
    """The image config: the base image's environment, ours on top. The same inputs give the
    same bytes (see `config_bytes`), so the same image id."""
    base_config = base.get("Config") or {}
    base_layers = list((base.get("RootFS") or {}).get("Layers") or [])
    history = [{"created": created, "created_by": f"BASE_IMAGE {base_ref}"} for _ in base_layers]
    history += [{"created": created, "created_by": f"pipeline IMAGE_BUILD=layered: {layer.name}"}
                for layer in layers]
    return {
        "architecture": base.get("Architecture") or "amd64",
        "os": base.get("Os") or "linux",
        "created": created,
        "config": {
            "User": APP_USER,
            "Env": list(base_config.get("Env") or []),
            "Entrypoint": list(entrypoint),
            "WorkingDir": f"/{APP_DIR}",
            "ExposedPorts": {f"{port}/tcp": {}},
            "Labels": {**(base_config.get("Labels") or {}), **labels},
        },
        "rootfs": {"type": "layers", "diff_ids": base_layers + list(diff_ids)},
        "history": history,
    }


def config_bytes(config: Mapping[str, Any]) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def zip_time(date_time: Tuple[int, int, int, int, int, int]) -> str:
    """A jar entry's time (zip keeps no zone: read as UTC) as the config's `created`."""
    return datetime(*date_time, tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the layer tars ----------------------------------------------------------------------------------

def _info(path: str, directory: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = FILE_TIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_layer(layer: Layer, jar: zipfile.ZipFile, jar_path: Path, out: Path) -> Tuple[str, int]:
    """The layer as an uncompressed tar, every entry sorted and with one time, owner and mode;
    returns its digest (the image's diff id) and size."""
    content = dict(layer.files)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(set(directories(content)) | set(content)):
            if path not in content:
                tar.addfile(_info(path, directory=True))
            elif content[path] == "":
                with jar_path.open("rb") as whole:
                    tar.addfile(_info(path, False, jar_path.stat().st_size), whole)
            else:
                with jar.open(content[path]) as member:
                    tar.addfile(_info(path, False, jar.getinfo(content[path]).file_size), member)
    digest = hashlib.sha256()
    with out.open("rb") as written:
        for block in iter(lambda: written.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}", out.stat().st_size


# -- the build ---------------------------------------------------------------------------------------

def read_jar(jar_path: Path) -> Tuple[Plan, str]:
    """The jar's plan and its newest entry's time. A jar that cannot be read or split is bad
    input (JAR, exit 2): nothing was built."""
    try:
        with zipfile.ZipFile(jar_path) as jar:
            entries = jar.namelist()
            manifest = _manifest(jar.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")) \
                if "META-INF/MANIFEST.MF" in entries else {}
            index = jar.read(LAYERS_IDX).decode("utf-8") if LAYERS_IDX in entries else None
            newest = max((info.date_time for info in jar.infolist()), default=(1980, 1, 1, 0, 0, 0))
        return plan(entries, manifest, index, jar_path.name), zip_time(newest)
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, ValueError) as exc:
        raise SettingsError("JAR", jar_path, f"cannot build layers from it: {exc}") from exc


def _manifest(text: str) -> Dict[str, str]:
    """META-INF/MANIFEST.MF's main section (a line starting with a space continues the last)."""
    attributes: Dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line:
            break
        if line.startswith(" ") and last:
            attributes[last] += line[1:]
        elif ":" in line:
            last, _, value = line.partition(":")
            attributes[last] = value.strip()
    return attributes


def build_image(api: ImageApi, cwd: Path, tag: str, labels: Mapping[str, str], build: BuildSettings,
                app_port: int) -> str:
    """Build the release image from the jar, load it into the engine as `tag`; its image id."""
    jar_path = build.jar_path(cwd)
    the_plan, created = read_jar(jar_path)
    if the_plan.note:
        log.info("    %s", the_plan.note)
    base = _base_image(api, build.base_image)
    with tempfile.TemporaryDirectory(prefix="pipeline-layers-") as work:
        tarball = Path(work) / "image.tar"
        diff_ids: List[str] = []
        with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as image, \
                zipfile.ZipFile(jar_path) as jar:
            for number, layer in enumerate(the_plan.layers):
                layer_file = Path(work) / f"layer-{number}.tar"
                diff_id, size = write_layer(layer, jar, jar_path, layer_file)
                log.info("    layer %s: %d file(s), %.1f MB, %s", layer.name, len(layer.files), size / 1e6,
                         diff_id[:19])
                diff_ids.append(diff_id)
                image.add(layer_file, f"{diff_id[7:]}/layer.tar")
            config = config_bytes(image_config(base, diff_ids, the_plan.layers, the_plan.entrypoint, labels,
                                               app_port, created, build.base_image))
            image_id = f"sha256:{hashlib.sha256(config).hexdigest()}"
            _add_bytes(image, f"{image_id[7:]}.json", config)
            # The base's layers are named (docker load wants one path per layer) but not carried.
            layer_paths = [f"{d[7:]}/layer.tar" for d in (base.get("RootFS") or {}).get("Layers") or []]
            layer_paths += [f"{d[7:]}/layer.tar" for d in diff_ids]
            manifest = [{"Config": f"{image_id[7:]}.json", "RepoTags": [tag], "Layers": layer_paths}]
            _add_bytes(image, "manifest.json", json.dumps(manifest).encode())
        with tarball.open("rb") as data:
            for chunk in api.load_image(data):
                if "error" in chunk:
                    raise DeployFailed(f"docker load of {tag} failed: {str(chunk['error']).strip()}")
    log.info("    image %s: %s", tag, image_id)
    return image_id


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _info(name, directory=False, size=len(data))
    tar.addfile(info, io.BytesIO(data))


def _base_image(api: ImageApi, ref: str) -> Dict[str, Any]:
    """BASE_IMAGE as the engine holds it, pulled first if it does not (as `FROM` would)."""
    if not api.images(name=ref):
        log.info("    pulling %s", ref)
        # The SDK splits the reference itself (a tag, a digest, or neither: latest).
        for chunk in api.pull(ref, stream=True, decode=True):
            if "error" in chunk:
                raise DeployFailed(f"BASE_IMAGE={ref}: the engine has no such image and cannot pull it: "
                                   f"{str(chunk['error']).strip()}")
    return api.inspect_image(ref)
