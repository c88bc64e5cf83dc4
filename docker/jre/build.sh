#!/usr/bin/env bash
# Build the local base image pipeline/jre:17 FROM scratch.
#
# Why: no image registry on the internet is reachable from these machines, so
# eclipse-temurin:17-jre cannot be pulled. Instead we jlink a small JRE from the
# machine's JDK 17 and put it, with exactly the shared libraries it links, into an
# otherwise empty image. There is no shell in the image: Dockerfiles built on it must
# not use RUN, and ENTRYPOINTs must be exec-form.
#
# Layout mirrors eclipse-temurin (JAVA_HOME=/opt/java/openjdk) so docker/Dockerfile
# works unchanged on either base.
#
# Env:
#   JRE_IMAGE    image tag to build            (default pipeline/jre:17)
#   JDK_HOME     JDK 17 to jlink from          (default /usr/lib/jvm/java-17-openjdk-amd64)
#   JRE_MODULES  comma-separated module list   (default below; add java.desktop,java.sql,
#                java.naming,java.instrument,... for a real Spring Boot app)
#   JRE_LIBS     space-separated absolute paths of extra shared libraries (a JDBC driver's JNI
#                library, say) copied to the same path, with every library they link
#   FORCE=1      rebuild even if the image exists
#   DOCKER       docker client to use          (default: docker on PATH)
set -euo pipefail

image="${JRE_IMAGE:-pipeline/jre:17}"
jdk="${JDK_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}"
modules="${JRE_MODULES:-java.base,java.logging,java.management,jdk.httpserver,jdk.unsupported}"
libs_extra="${JRE_LIBS:-}"
docker="${DOCKER:-docker}"
java_home=/opt/java/openjdk
app_uid=10001

log() { echo "docker/jre/build.sh: $*"; }
die() { echo "docker/jre/build.sh: ERROR: $*" >&2; exit 1; }

# An image of this tag built with other modules or libraries is rebuilt.
wanted="$modules|$libs_extra"
if [[ "${FORCE:-0}" != 1 ]] &&
    built="$("$docker" image inspect -f '{{index .Config.Labels "pipeline.jre.modules"}}|{{index .Config.Labels "pipeline.jre.libs"}}' "$image" 2>/dev/null)" &&
    [[ "$built" == "$wanted" ]]; then
    log "$image already exists (FORCE=1 to rebuild)"
    exit 0
fi
for lib in $libs_extra; do
    [[ "$lib" == /* && -f "$lib" ]] || die "JRE_LIBS: no library at $lib"
done

[[ -x "$jdk/bin/jlink" && -d "$jdk/jmods" ]] ||
    die "no JDK with jmods at $jdk (install openjdk-17-jdk-headless or set JDK_HOME)"
command -v ldd >/dev/null || die "ldd not found"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
jre="$rootfs$java_home"
mkdir -p "$rootfs"

log "jlink $modules"
# --generate-cds-archive writes a default CDS archive (lib/server/classes.jsa): classes
# are mapped from it instead of parsed, which takes ~30-40% off JVM start-up.
"$jdk/bin/jlink" \
    --module-path "$jdk/jmods" \
    --add-modules "$modules" \
    --strip-debug --no-man-pages --no-header-files \
    --generate-cds-archive \
    --output "$jre" >/dev/null
# The no-compressed-oops archive is only used with heaps > 32 GiB; drop its ~11 MB.
rm -f "$jre/lib/server/classes_nocoops.jsa"

# Copy every shared library the JRE links, plus the dynamic loader, to the same path
# in the rootfs. Libraries inside the JRE itself are skipped. "not found" is only
# acceptable for libraries the JRE ships (e.g. libjvm.so, which the launcher dlopens
# by full path before libjava.so needs it).
elves=()
while IFS= read -r -d '' f; do
    [[ "$(head -c4 "$f" | od -An -c | tr -d ' ')" == '177ELF' ]] && elves+=("$f")
done < <(find "$jre/bin" "$jre/lib" -type f -print0)
# The extra libraries go in at their own path (a JNI library is found on java.library.path,
# which for Debian's JDK includes /usr/lib/x86_64-linux-gnu/jni); ldd below adds what they link.
for lib in $libs_extra; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
    elves+=("$rootfs$lib")
done
declare -A libs=()
while read -r name arrow path _; do
    if [[ "$arrow" == "=>" && "$path" == "not" ]]; then
        [[ -n "$(find "$jre" -name "$name" -print -quit)" ]] ||
            die "unresolved library $name"
        continue
    fi
    if [[ "$arrow" == "=>" && "$path" == /* ]]; then
        lib="$path"
    elif [[ "$name" == /* ]]; then
        lib="$name" # the loader line: "/lib64/ld-linux-x86-64.so.2 (0x...)"
    else
        continue # linux-vdso.so.1 and the like: provided by the kernel
    fi
    [[ "$lib" == "$rootfs"/* ]] && continue
    libs["$lib"]=1
done < <(ldd "${elves[@]}" 2>/dev/null | grep -v ':$')

((${#libs[@]} > 0)) || die "ldd found no libraries (is $jdk a dynamically linked JDK?)"
for lib in "${!libs[@]}"; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib" # -L: the real file, not the distro's symlink chain
done
log "copied ${#libs[@]} system libraries: $(printf '%s ' "${!libs[@]}")"

# Minimal /etc: a non-root user for the app and files-only name service. glibc >= 2.34
# has nss_files/nss_dns built into libc.so.6, so nothing else needs copying for
# getpwuid() (Java's user.home) or DNS; docker bind-mounts /etc/hosts and resolv.conf.
mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/home/app"
cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
app:x:$app_uid:$app_uid:app:/home/app:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
app:x:$app_uid:
EOF
cat >"$rootfs/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
hosts:  files dns
EOF
chmod 1777 "$rootfs/tmp" # the JVM writes hsperfdata and temp files here

# Pack the rootfs ourselves so ownership and modes are exact (root-owned, /tmp 1777,
# the app's home owned by the app), whatever the builder does with COPY.
tar -C "$rootfs" --numeric-owner --owner=0 --group=0 --exclude=./home/app \
    -cf "$work/rootfs.tar" .
tar -C "$rootfs" --numeric-owner --owner="$app_uid" --group="$app_uid" \
    -rf "$work/rootfs.tar" ./home/app

cat >"$work/Dockerfile" <<EOF
FROM scratch
ADD rootfs.tar /
ENV JAVA_HOME=$java_home \\
    PATH=$java_home/bin:/usr/bin:/bin \\
    LANG=C.UTF-8
LABEL org.opencontainers.image.title="pipeline JRE 17" \\
      org.opencontainers.image.description="jlink JRE from the host JDK 17 on scratch" \\
      pipeline.jre.modules="$modules" \\
      pipeline.jre.libs="$libs_extra"
USER $app_uid:$app_uid
WORKDIR /
CMD ["java", "-version"]
EOF

log "building $image"
old_id="$("$docker" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
# Only rootfs.tar and the Dockerfile form the context.
rm -rf "$rootfs"
# Output goes to a log shown only on failure: without buildx, the docker CLI prints a
# "legacy builder is deprecated" banner on every build, which is noise here.
"$docker" build -t "$image" "$work" >"$work/build.log" 2>&1 || {
    cat "$work/build.log" >&2
    die "docker build of $image failed"
}

# A FORCE rebuild leaves the previous image untagged; drop it unless something
# (e.g. an app image built on it) still uses it.
new_id="$("$docker" image inspect -f '{{.Id}}' "$image")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
    "$docker" image rm "$old_id" >/dev/null 2>&1 || true
fi

# Smoke test: the JRE must start inside the image, as the non-root user.
out="$("$docker" run --rm --network none "$image" java -version 2>&1)" ||
    die "java -version failed in $image: $out"
log "built $image ($("$docker" image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}')): $(head -n1 <<<"$out")"
