"""IMAGE_BUILD=layered, the pure parts: which jar, which layer each entry goes to, how the image
starts, and layer tars whose bytes depend on the jar's content alone."""
from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, Optional

import pytest

from pipeline.adapters import layered
from pipeline.core.errors import SettingsError
from pipeline.adapters.layered import Layer, parse_layers_idx, plan
from pipeline.core.settings import Settings

STANDARD = """\
- "dependencies":
  - "BOOT-INF/lib/"
- "spring-boot-loader":
  - "org/"
- "snapshot-dependencies":
- "application":
  - "BOOT-INF/classes/"
  - "BOOT-INF/classpath.idx"
  - "BOOT-INF/layers.idx"
  - "META-INF/"
"""
CUSTOM = """\
- "big":
  - "BOOT-INF/lib/icu4j.jar"
- "dependencies":
  - "BOOT-INF/lib/"
- "snapshot-dependencies":
- "spring-boot-loader":
  - "org/"
- "application":
  - "BOOT-INF/"
  - "META-INF/"
"""
ENTRIES = ["META-INF/", "META-INF/MANIFEST.MF", "org/", "org/springframework/boot/loader/JarLauncher.class",
           "BOOT-INF/", "BOOT-INF/classes/", "BOOT-INF/classes/demo/App.class", "BOOT-INF/lib/",
           "BOOT-INF/lib/guava.jar", "BOOT-INF/lib/icu4j.jar", "BOOT-INF/classpath.idx", "BOOT-INF/layers.idx"]
BOOT = {"Main-Class": "org.springframework.boot.loader.JarLauncher", "Start-Class": "demo.App"}


def layers_of(result: layered.Plan) -> Dict[str, list]:
    return {layer.name: [entry for _, entry in layer.files] for layer in result.layers}


# -- layers.idx ---------------------------------------------------------------------------------------

def test_the_index_is_read_in_its_order_with_empty_layers():
    assert parse_layers_idx(STANDARD) == [
        ("dependencies", ["BOOT-INF/lib/"]), ("spring-boot-loader", ["org/"]), ("snapshot-dependencies", []),
        ("application", ["BOOT-INF/classes/", "BOOT-INF/classpath.idx", "BOOT-INF/layers.idx", "META-INF/"])]


@pytest.mark.parametrize("text, problem", [
    ("", "names no layer"),
    ('  - "BOOT-INF/lib/"\n', "line 1"),
    ('- "a":\n- "a":\n', "layer 'a' named twice"),
    ('- dependencies:\n', "line 1"),
    ('- "a":\n    - "BOOT-INF/"\n', "line 2"),
])
def test_an_index_that_cannot_be_read_names_the_line(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_layers_idx(text)


# -- the plan --------------------------------------------------------------------------------------

def test_a_spring_boot_jar_is_split_by_its_index_and_started_by_its_own_launcher():
    result = plan(ENTRIES, BOOT, STANDARD, "app.jar")
    assert layers_of(result) == {
        "dependencies": ["BOOT-INF/lib/guava.jar", "BOOT-INF/lib/icu4j.jar"],
        "spring-boot-loader": ["org/springframework/boot/loader/JarLauncher.class"],
        "application": ["BOOT-INF/classes/demo/App.class", "BOOT-INF/classpath.idx", "BOOT-INF/layers.idx",
                        "META-INF/MANIFEST.MF"],
    }, "the empty snapshot-dependencies layer is left out, directories are not files"
    assert result.layers[0].files[0] == ("app/BOOT-INF/lib/guava.jar", "BOOT-INF/lib/guava.jar")
    assert result.entrypoint == ("java", *layered.JVM_OPTIONS, "-cp", "/app",
                                 "org.springframework.boot.loader.JarLauncher")
    assert result.note == ""


def test_custom_layers_keep_their_order_and_an_entry_goes_to_the_first_layer_naming_it():
    result = plan(ENTRIES, BOOT, CUSTOM, "app.jar")
    assert [layer.name for layer in result.layers] == ["big", "dependencies", "spring-boot-loader", "application"]
    assert layers_of(result)["big"] == ["BOOT-INF/lib/icu4j.jar"]
    assert layers_of(result)["dependencies"] == ["BOOT-INF/lib/guava.jar"]


def test_without_the_launcher_in_the_jar_start_class_runs_from_classes_and_libraries():
    entries = [e for e in ENTRIES if not e.startswith("org/")]
    result = plan(entries, {"Main-Class": "org.springframework.boot.loader.JarLauncher", "Start-Class": "demo.App"},
                  STANDARD, "app.jar")
    assert result.entrypoint[-3:] == ("-cp", "/app/BOOT-INF/classes:/app/BOOT-INF/lib/*", "demo.App")


@pytest.mark.parametrize("manifest, index, problem", [
    ({}, STANDARD, "neither a launcher"),
    (BOOT, '- "dependencies":\n  - "BOOT-INF/lib/"\n', "puts META-INF/MANIFEST.MF in no layer"),
])
def test_a_jar_its_index_does_not_fit_is_refused(manifest, index, problem):
    with pytest.raises(ValueError, match=problem):
        plan(ENTRIES, manifest, index, "app.jar")


def test_a_jar_without_an_index_is_one_layer_run_as_the_dockerfile_runs_it():
    result = plan(["META-INF/MANIFEST.MF", "demo/Demo.class"], {"Main-Class": "demo.Demo"}, None, "app.jar")
    assert result.layers == (Layer("jar", (("app/app.jar", ""),)),)
    assert result.entrypoint == ("java", *layered.JVM_OPTIONS, "-jar", "/app/app.jar")
    assert result.note == "app.jar has no BOOT-INF/layers.idx: one image layer, the whole jar"


def test_every_directory_above_the_files_is_listed_once():
    assert layered.directories(["app/a/b/c.class", "app/a/d.class"]) == ["app", "app/a", "app/a/b"]


# -- reproducible layer tars --------------------------------------------------------------------------

def write_jar(path: Path, files: Dict[str, bytes], date_time=(2024, 5, 6, 7, 8, 10), order=None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as jar:
        for name in order or list(files):
            info = zipfile.ZipInfo(name, date_time)
            info.external_attr = 0o600 << 16
            jar.writestr(info, files[name])
    return path


def layer_bytes(jar_path: Path, index: Optional[str], out: Path) -> list:
    result, _ = layered.read_jar(jar_path)
    written = []
    with zipfile.ZipFile(jar_path) as jar:
        for number, layer in enumerate(result.layers):
            digest, size = layered.write_layer(layer, jar, jar_path, out / f"{number}.tar")
            data = (out / f"{number}.tar").read_bytes()
            assert digest == "sha256:" + hashlib.sha256(data).hexdigest() and size == len(data)
            written.append(data)
    return written


FILES = {"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\r\nMain-Class: launcher.Launcher\r\nStart-Class: a.B\r\n\r\n",
         "launcher/Launcher.class": b"\xca\xfe\xba\xbe launcher",
         "BOOT-INF/classes/a/B.class": b"\xca\xfe\xba\xbe app",
         "BOOT-INF/lib/z.jar": b"z" * 5000, "BOOT-INF/lib/a.jar": b"a" * 3000,
         "BOOT-INF/layers.idx": STANDARD.replace('"org/"', '"launcher/"').encode()}


def test_the_same_content_gives_the_same_layer_bytes_whatever_the_jars_times_order_and_modes(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = layer_bytes(write_jar(tmp_path / "one.jar", FILES), None, tmp_path / "one")
    second = layer_bytes(write_jar(tmp_path / "two.jar", FILES, date_time=(2030, 1, 2, 3, 4, 6),
                                   order=sorted(FILES, reverse=True)), None, tmp_path / "two")
    assert len(first) == 3 and first == second


def test_a_code_change_changes_the_application_layer_alone(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = layer_bytes(write_jar(tmp_path / "one.jar", FILES), None, tmp_path / "one")
    changed = {**FILES, "BOOT-INF/classes/a/B.class": b"\xca\xfe\xba\xbe app, changed"}
    second = layer_bytes(write_jar(tmp_path / "two.jar", changed), None, tmp_path / "two")
    assert [a == b for a, b in zip(first, second)] == [True, True, False]


def test_every_entry_has_one_time_owner_and_mode_and_they_are_sorted(tmp_path):
    (tmp_path / "out").mkdir()
    data = layer_bytes(write_jar(tmp_path / "app.jar", FILES), None, tmp_path / "out")[0]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["app", "app/BOOT-INF", "app/BOOT-INF/lib", "app/BOOT-INF/lib/a.jar",
                                             "app/BOOT-INF/lib/z.jar"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(1, 0, 0, "", "")}
        assert {m.name: oct(m.mode) for m in members if m.isfile()} == {"app/BOOT-INF/lib/a.jar": "0o644",
                                                                        "app/BOOT-INF/lib/z.jar": "0o644"}
        assert {oct(m.mode) for m in members if m.isdir()} == {"0o755"}
        assert tar.extractfile("app/BOOT-INF/lib/z.jar").read() == b"z" * 5000


def test_a_plain_jar_is_the_jar_file_itself_in_one_layer(tmp_path):
    (tmp_path / "out").mkdir()
    jar = write_jar(tmp_path / "plain.jar", {"META-INF/MANIFEST.MF": b"Main-Class: a.B\r\n\r\n", "a/B.class": b"x"})
    [data] = layer_bytes(jar, None, tmp_path / "out")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("app/app.jar").read() == jar.read_bytes()


def test_a_file_that_is_no_jar_is_bad_input_naming_jar(tmp_path):
    (tmp_path / "app.jar").write_text("not a zip")
    with pytest.raises(SettingsError, match=r"^JAR=.*app.jar: cannot build layers from it: File is not a zip"):
        layered.read_jar(tmp_path / "app.jar")


def test_the_image_config_is_the_same_bytes_for_the_same_inputs_and_keeps_the_bases_environment():
    base = {"Architecture": "amd64", "Os": "linux", "RootFS": {"Layers": ["sha256:base"]},
            "Config": {"Env": ["JAVA_HOME=/opt/java/openjdk"], "Labels": {"base": "1"}}}
    layers = (Layer("dependencies", ()), Layer("application", ()))

    def config() -> bytes:
        return layered.config_bytes(layered.image_config(base, ["sha256:d", "sha256:a"], layers, ("java", "-jar"),
                                                         {"pipeline.app": "x"}, 8080, "2024-01-01T00:00:00Z", "b:1"))
    assert config() == config()
    made = layered.image_config(base, ["sha256:d", "sha256:a"], layers, ("java",), {"pipeline.app": "x"}, 9000,
                                "2024-01-01T00:00:00Z", "b:1")
    assert made["rootfs"] == {"type": "layers", "diff_ids": ["sha256:base", "sha256:d", "sha256:a"]}
    assert made["config"]["Env"] == ["JAVA_HOME=/opt/java/openjdk"]
    assert made["config"]["Labels"] == {"base": "1", "pipeline.app": "x"}
    assert made["config"]["User"] == "10001:10001" and made["config"]["ExposedPorts"] == {"9000/tcp": {}}
    assert len(made["history"]) == 3


# -- settings ----------------------------------------------------------------------------------------

def test_the_default_build_is_the_dockerfile(tmp_path):
    s = Settings.from_env({}, tmp_path)
    assert (s.image_build, s.jar, s.base_image) == ("dockerfile", None, "pipeline/jre:17")


@pytest.mark.parametrize("env, message", [
    ({"IMAGE_BUILD": "jib"}, "IMAGE_BUILD=jib: must be one of dockerfile, layered"),
    ({"IMAGE_BUILD": "layered", "BASE_IMAGE": "Not An Image"},
     "BASE_IMAGE=Not An Image: not an image reference like pipeline/jre:17"),
    ({"JAR": "app.jar"}, "JAR=app.jar: only read with IMAGE_BUILD=layered, not IMAGE_BUILD=dockerfile"),
    ({"BASE_IMAGE": "x:1"}, "BASE_IMAGE=x:1: only read with IMAGE_BUILD=layered, not IMAGE_BUILD=dockerfile"),
    ({"IMAGE_BUILD": "layered", "DOCKERFILE": "docker/Dockerfile"},
     "DOCKERFILE=docker/Dockerfile: only read with IMAGE_BUILD=dockerfile, not IMAGE_BUILD=layered"),
    ({"IMAGE_BUILD": "layered", "BUILD_ARGS": "A=1 NPM_TOKEN=s3cret"},
     "BUILD_ARGS=A=1 NPM_TOKEN=***: only read with IMAGE_BUILD=dockerfile, not IMAGE_BUILD=layered"),
])
def test_bad_build_settings_are_one_line_naming_the_setting(tmp_path, env, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env, tmp_path)
    assert str(caught.value) == message


@pytest.mark.parametrize("base", ["pipeline/jre:17", "127.0.0.1:5000/pipeline/jre:17", "eclipse-temurin:17-jre",
                                  "busybox", "registry.example:443/a/b-c@sha256:" + "0" * 64])
def test_base_image_takes_image_references(tmp_path, base):
    assert Settings.from_env({"IMAGE_BUILD": "layered", "BASE_IMAGE": base}, tmp_path).base_image == base


def layered_settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"IMAGE_BUILD": "layered", "BUILD_COMMAND": "", **env}, tmp_path)


def test_the_jar_is_the_one_under_build_libs_leaving_out_the_plain_jar(tmp_path):
    libs = tmp_path / "build" / "libs"
    libs.mkdir(parents=True)
    (libs / "app-1.0.jar").write_bytes(b"")
    (libs / "app-1.0-plain.jar").write_bytes(b"")
    assert layered_settings(tmp_path).jar_path(tmp_path) == libs / "app-1.0.jar"
    layered_settings(tmp_path).check_build_inputs(tmp_path)   # nothing to complain about


def test_no_jar_or_several_is_exit_2_naming_them(tmp_path):
    libs = tmp_path / "build" / "libs"
    libs.mkdir(parents=True)
    with pytest.raises(SettingsError) as caught:
        layered_settings(tmp_path).check_build_inputs(tmp_path)
    assert str(caught.value) == (f"JAR: not set, and {libs} holds no *.jar besides any -plain.jar: "
                                 "set JAR to the one to release")
    assert caught.value.exit_code == 2
    (libs / "a.jar").write_bytes(b"")
    (libs / "b.jar").write_bytes(b"")
    with pytest.raises(SettingsError, match=r"holds 2 jars \(a.jar, b.jar\) besides"):
        layered_settings(tmp_path).jar_path(tmp_path)


def test_a_missing_jar_is_exit_2(tmp_path):
    with pytest.raises(SettingsError, match="^JAR=out/app.jar: no such file$"):
        layered_settings(tmp_path, JAR="out/app.jar").check_build_inputs(tmp_path)


def test_with_a_build_command_the_jar_is_looked_for_after_the_build(tmp_path):
    s = Settings.from_env({"IMAGE_BUILD": "layered", "BUILD_COMMAND": "./gradlew bootJar"}, tmp_path)
    s.check_build_inputs(tmp_path)   # the build makes it: not looked for yet
    with pytest.raises(SettingsError, match="^JAR: not set"):
        s.jar_path(tmp_path)
