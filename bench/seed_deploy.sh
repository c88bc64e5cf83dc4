#!/bin/bash
# The seed's deploy script (docs: seeds/003, "스크립트 수정"), transcribed to run on the local
# stack for bench/seed_vs_pipeline.py. Its logic is kept as it is, including what the benchmark
# is meant to show: no health wait before the switch, the live container stopped when it is the
# target, and the other color never stopped. Changed only where it could not run here at all:
#
#   - `deployment_target_ip=docker inspect ...` lacks `$(...)`; and with it, inspecting a
#     container that does not exist yet gives "", which sends the build to the wrong color and
#     nginx to "http://:8080". The post keeps the IPs in Jenkins variables and `docker run` pins
#     them (--ip), so the fixed addresses are used: $BLUE_IP / $GREEN_IP.
#   - names: blue/green/localhost:5000/blue:1.0 become $NAME-blue etc. on $REGISTRY, and the
#     network `deploy` becomes $NETWORK (created by the bench with fixed IPs, as in the post).
#   - `docker login` without a registry logs into Docker Hub; here it logs into $REGISTRY, with
#     a private DOCKER_CONFIG so the machine's docker login is left alone. The post's push and
#     pull lines lost their line breaks in the markdown; they are restored.
#   - `fuser -s -k 8080/tcp` kills any process on this machine listening on 8080: dropped.
#     So is `-p 8080:8080`, which the second container cannot get while the first holds it.
#   - `-v /root/docker_volumn/<color>:/app` would hide our image's /app/app.jar (the post's
#     image keeps its jar at /koboot.jar): dropped.
#   - `./gradlew bootJar` is $BUILD_COMMAND; the Dockerfile is docker/Dockerfile with the
#     demo jar (build args below).
#   - `docker run` also gets `-e APP_VERSION -e APP_COLOR --env-file $CONTAINER_ENV_FILE` (the
#     demo says which release answers and takes STARTUP_DELAY_MS to start, like the post's
#     Spring Boot app) and `--label bench.run=$NAME`, so that the dangling-image clean-up only
#     removes this run's images, never another user's.
#   - the nginx switch runs over SSH as in the post, but with the bench nginx's reload command
#     instead of `service nginx reload`; and `\\\$service_url` becomes `\$service_url`: run by
#     bash, the post's escaping writes `set \$service_url ...`, which nginx rejects ("invalid
#     variable name"), so the reload fails and nginx never switches.
#
# Environment (all required): NAME NETWORK BLUE_IP GREEN_IP REGISTRY REGISTRY_USER
#   REGISTRY_PASSWORD_FILE VERSION BUILD_COMMAND BUILD_CONTEXT DOCKERFILE JRE_IMAGE
#   CONTAINER_ENV_FILE SSH_TARGET (e.g. "-p 2222 -i key -o UserKnownHostsFile=kh root@127.0.0.1")
#   NGINX_INCLUDE NGINX_RELOAD_COMMAND DOCKER_CONFIG
set -u

# Blue & Green 타겟 지정 변수
target=2
deployment_target_ip=""
blue_ip=""
green_ip=""

# 빌드
$BUILD_COMMAND

# Blue Health Check (curl -s without -f: any HTTP answer, even a 404 for /ttt, counts as alive)
if curl -s "http://$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$NAME-blue" 2>/dev/null):8080/ttt" > /dev/null; then
 deployment_target_ip=$GREEN_IP
 green_ip=$deployment_target_ip
 target=0
else
 deployment_target_ip=$BLUE_IP
 blue_ip=$deployment_target_ip
 target=1
fi

# Target과 일치하는 가동중인 Spring Boot 컨테이너 중지 & 삭제
if [ "$target" -eq 0 ]; then
 if docker ps -a --filter "name=$NAME-green" | grep -q "$NAME-green"; then
  docker stop "$NAME-green"
  docker rm "$NAME-green"
 fi

 # 기존 Spring Boot Image 중 이미지가 기존과 똑같은게 있으면 이미지 삭제
 if docker images | awk '{print $1":"$2}' | grep -q "$REGISTRY/$NAME-green:1.0"; then
   docker rmi -f "$REGISTRY/$NAME-green:1.0"
 fi

elif [ "$target" -eq 1 ]; then
 if docker ps -a --filter "name=$NAME-blue" | grep -q "$NAME-blue"; then
  docker stop "$NAME-blue"
  docker rm "$NAME-blue"
 fi

 # 기존 Spring Boot Image 중 이미지가 기존과 똑같은게 있으면 이미지 삭제
 if docker images | awk '{print $1":"$2}' | grep -q "$REGISTRY/$NAME-blue:1.0"; then
   docker rmi -f "$REGISTRY/$NAME-blue:1.0"
 fi
else
 echo "Invalid target Value"
fi

# Docker Registry Login
docker login -u "$REGISTRY_USER" --password-stdin "$REGISTRY" < "$REGISTRY_PASSWORD_FILE"

build() {
 docker build --no-cache --label "bench.run=$NAME" -t "$1" -f "$DOCKERFILE" \
  --build-arg "BASE_IMAGE=$JRE_IMAGE" --build-arg JAR=build/libs/app.jar "$BUILD_CONTEXT"
}

run() {  # color ip image
 docker run -d --network "$NETWORK" --ip "$2" --privileged --name "$NAME-$1" \
  --label "bench.run=$NAME" -e "APP_VERSION=$VERSION" -e "APP_COLOR=$1" --env-file "$CONTAINER_ENV_FILE" "$3"
}

# 도커파일 빌드
if [ "${deployment_target_ip}" == "${blue_ip}" ]; then
 build "$REGISTRY/$NAME-blue:1.0"

 # Container Registry에 이미지 Push
 docker push "$REGISTRY/$NAME-blue:1.0"

 # Push한 이미지 삭제
 docker rmi "$REGISTRY/$NAME-blue:1.0"

 # Container Registry에서 이미지 Pull
 docker pull "$REGISTRY/$NAME-blue:1.0"

 # Docker Container 생성
 run blue "$BLUE_IP" "$REGISTRY/$NAME-blue:1.0"

elif [ "${deployment_target_ip}" == "${green_ip}" ]; then
 build "$REGISTRY/$NAME-green:1.0"

 # Container Registry에 이미지 Push
 docker push "$REGISTRY/$NAME-green:1.0"

 # Push한 이미지 삭제
 docker rmi "$REGISTRY/$NAME-green:1.0"

 # Container Registry에서 이미지 Pull
 docker pull "$REGISTRY/$NAME-green:1.0"

 # Docker Container 생성
 run green "$GREEN_IP" "$REGISTRY/$NAME-green:1.0"
else
 echo "Invalid target Value"
fi

# 사용하지 않는 불필요한 이미지 삭제 (this run's only)
dangling_images=$(docker images -f "dangling=true" -f "label=bench.run=$NAME" -q)
if [[ -n "$dangling_images" ]]; then
    docker rmi -f $dangling_images || true
fi

# Nginx Reverse Proxy 방향 (타겟 컨테이너) 변경
ssh $SSH_TARGET "echo 'set \$service_url http://${deployment_target_ip}:8080;' > $NGINX_INCLUDE && $NGINX_RELOAD_COMMAND"
echo "Switch the reverse proxy direction of nginx to ${deployment_target_ip} 🔄"
