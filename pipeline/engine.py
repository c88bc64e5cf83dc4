"""The Docker engine, through the docker SDK: network, images, the two color containers."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import docker
import docker.errors
import requests.exceptions

from .decide import ContainerFact
from .errors import DeployFailed, PreflightError, SettingsError
from .settings import COLORS, Settings

log = logging.getLogger("pipeline")

LABEL_APP = "pipeline.app"
LABEL_COLOR = "pipeline.color"
LABEL_VERSION = "pipeline.version"


class Engine:
    """The few engine operations a deploy needs, with errors turned into pipeline's own."""

    def __init__(self, client: docker.DockerClient, settings: Settings) -> None:
        self.client = client
        self.api = client.api
        self.settings = settings

    @classmethod
    def connect(cls, settings: Settings, environ: Mapping[str, str]) -> "Engine":
        if settings.target != "docker":
            # pipeline/swarm.py drives a swarm, but the commands do not use it yet (issue 11).
            raise SettingsError("TARGET", settings.target,
                                "the commands do not deploy to a swarm yet; use TARGET=docker")
        env = dict(environ)
        if settings.docker_host:
            env["DOCKER_HOST"] = settings.docker_host
        try:
            client = docker.from_env(environment=env, timeout=120)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            where = env.get("DOCKER_HOST") or "the local socket"
            raise PreflightError(f"cannot reach the docker engine at {where}: {_reason(exc)}") from exc
        return cls(client, settings)

    # -- network -------------------------------------------------------------------------------

    def ensure_network(self) -> bool:
        """Create the deploy network if missing; refuse one with another subnet. True if created."""
        s = self.settings
        found = self.api.networks(names=[s.deploy_network])
        found = [n for n in found if n["Name"] == s.deploy_network]
        if found:
            configs = (found[0].get("IPAM") or {}).get("Config") or []
            subnets = {c.get("Subnet") for c in configs}
            if str(s.deploy_subnet) not in subnets:
                raise PreflightError(
                    f"docker network {s.deploy_network} exists with subnet "
                    f"{', '.join(sorted(x for x in subnets if x)) or 'none'}, not DEPLOY_SUBNET={s.deploy_subnet}"
                )
            return False
        ipam = docker.types.IPAMConfig(pool_configs=[
            docker.types.IPAMPool(subnet=str(s.deploy_subnet), gateway=str(s.deploy_gateway))
        ])
        try:
            self.api.create_network(s.deploy_network, driver="bridge", ipam=ipam,
                                    labels={LABEL_APP: s.app_name})
        except docker.errors.APIError as exc:
            raise PreflightError(f"cannot create docker network {s.deploy_network} "
                                 f"({s.deploy_subnet}): {_reason(exc)}") from exc
        return True

    def network_exists(self) -> bool:
        return any(n["Name"] == self.settings.deploy_network
                   for n in self.api.networks(names=[self.settings.deploy_network]))

    def remove_network(self) -> None:
        """Remove the deploy network again (only right after this run created it, still empty)."""
        try:
            self.api.remove_network(self.settings.deploy_network)
        except docker.errors.APIError as exc:
            log.warning("    could not remove docker network %s again: %s", self.settings.deploy_network, _reason(exc))

    # -- images --------------------------------------------------------------------------------

    def build_image(self, cwd: Path, tag: str, version: str) -> str:
        """Build the release image, streaming the build's output; returns the image id."""
        s = self.settings
        context = s.build_context if s.build_context.is_absolute() else cwd / s.build_context
        dockerfile = s.dockerfile if s.dockerfile.is_absolute() else cwd / s.dockerfile
        labels = {LABEL_APP: s.app_name, LABEL_VERSION: version}
        image_id = None
        last: List[str] = []
        try:
            for chunk in self.api.build(path=str(context), dockerfile=str(dockerfile.resolve()), tag=tag,
                                        buildargs=dict(s.build_args), labels=labels, rm=True,
                                        forcerm=True, decode=True):
                if "stream" in chunk:
                    for line in chunk["stream"].splitlines():
                        if line.strip():
                            log.info("    | %s", line.rstrip())
                            last = (last + [line.rstrip()])[-20:]
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    raise DeployFailed(f"docker build of {tag} failed: {chunk['error'].strip()}", last)
        except docker.errors.APIError as exc:
            raise DeployFailed(f"docker build of {tag} failed: {_reason(exc)}", last) from exc
        if image_id is None:
            image_id = self.api.inspect_image(tag)["Id"]
        return image_id

    def push_and_pull(self, tag: str) -> None:
        """Push the release to the registry, then pull it back as the target engine would."""
        s = self.settings
        auth = None
        if s.registry_username:
            auth = {"username": s.registry_username, "password": s.registry_password.reveal()}
            try:
                self.client.login(username=s.registry_username, password=s.registry_password.reveal(),
                                  registry=s.registry.split("/")[0], reauth=True)
            except docker.errors.APIError as exc:
                raise DeployFailed(f"registry login to {s.registry} as {s.registry_username} failed: "
                                   f"{_reason(exc)}") from exc
        repository, _, version = tag.rpartition(":")
        for verb, stream in (("push", self.api.push), ("pull", self.api.pull)):
            try:
                for chunk in stream(repository, tag=version, stream=True, decode=True, auth_config=auth):
                    if "error" in chunk:
                        raise DeployFailed(f"docker {verb} {tag} failed: {chunk['error']}")
            except docker.errors.APIError as exc:
                raise DeployFailed(f"docker {verb} {tag} failed: {_reason(exc)}") from exc
            log.info("    docker %s %s: done", verb, tag)

    def release_images(self) -> Dict[str, float]:
        """This app's release images: reference -> creation time (for retention)."""
        images = {}
        for image in self.api.images(filters={"label": f"{LABEL_APP}={self.settings.app_name}"}):
            for ref in image.get("RepoTags") or []:
                if ref != "<none>:<none>":
                    images[ref] = float(image.get("Created", 0))
        return images

    def remove_image(self, ref: str) -> None:
        try:
            self.api.remove_image(ref)
        except docker.errors.APIError as exc:
            log.warning("    could not remove image %s: %s", ref, _reason(exc))

    def prune_dangling(self) -> None:
        try:
            # Only this app's: another app's build in progress on the same engine has dangling
            # layers too, and pruning them makes its build fail.
            self.api.prune_images(filters={"dangling": True, "label": f"{LABEL_APP}={self.settings.app_name}"})
        except docker.errors.APIError as exc:
            log.warning("    could not prune dangling images: %s", _reason(exc))

    # -- containers ----------------------------------------------------------------------------

    def container(self, color: str) -> Optional[ContainerFact]:
        name = self.settings.container_name(color)
        try:
            info = self.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        labels = info["Config"].get("Labels") or {}
        if labels.get(LABEL_APP) != self.settings.app_name:
            # Not one of ours: never touch, never probe it.
            raise PreflightError(f"container {name} exists but was not started by pipeline "
                                 f"(no label {LABEL_APP}={self.settings.app_name}); remove or rename it")
        networks = info["NetworkSettings"].get("Networks") or {}
        endpoint = networks.get(self.settings.deploy_network) or {}
        ip = endpoint.get("IPAddress") or (endpoint.get("IPAMConfig") or {}).get("IPv4Address") or None
        return ContainerFact(
            color=color, name=name, status=info["State"]["Status"], version=labels.get(LABEL_VERSION),
            image=info["Config"].get("Image", ""), ip=ip, restart_count=int(info.get("RestartCount", 0)),
        )

    def containers(self) -> Dict[str, ContainerFact]:
        return {c: fact for c in COLORS if (fact := self.container(c)) is not None}

    def holds_address(self, color: str) -> bool:
        """True only if our container of this color is running and holds the color's fixed IP.

        The only gate before any probe of a container address: an address no container of ours
        holds may route off this machine.
        """
        fact = self.container(color)
        return fact is not None and fact.running and self.at_fixed_ip(fact)

    def at_fixed_ip(self, fact: ContainerFact) -> bool:
        """The container holds its color's address on a deploy network that exists now."""
        return fact.ip == self.settings.ip_of(fact.color) and self.network_exists()

    def run(self, color: str, image: str, version: str) -> None:
        """Start the release as this color's container at its fixed IP (no host port published)."""
        s = self.settings
        name = s.container_name(color)
        self.remove(color)
        environment = {"APP_VERSION": version, "APP_COLOR": color}
        if s.container_env_file is not None:
            environment = {**_read_env_file(s.container_env_file), **environment}
        host_config = self.api.create_host_config(
            network_mode=s.deploy_network,
            binds=list(s.volumes_for(color)) or None,
            # Back after a daemon or host restart; a container we stopped stays stopped.
            restart_policy={"Name": "unless-stopped"},
        )
        networking = self.api.create_networking_config({
            s.deploy_network: self.api.create_endpoint_config(ipv4_address=s.ip_of(color)),
        })
        try:
            created = self.api.create_container(
                image, name=name, detach=True, environment=environment, host_config=host_config,
                networking_config=networking, stop_signal="SIGTERM",
                labels={LABEL_APP: s.app_name, LABEL_COLOR: color, LABEL_VERSION: version},
            )
            self.api.start(created["Id"])
        except docker.errors.APIError as exc:
            self.remove(color)
            raise DeployFailed(f"cannot start {name} from {image} at {s.ip_of(color)}: {_reason(exc)}") from exc

    def start(self, color: str) -> None:
        try:
            self.api.start(self.settings.container_name(color))
        except docker.errors.APIError as exc:
            raise DeployFailed(f"cannot start {self.settings.container_name(color)}: {_reason(exc)}") from exc

    def stop(self, color: str) -> None:
        """Stop gracefully: SIGTERM, then SIGKILL after STOP_TIMEOUT. Kept for rollback."""
        try:
            self.api.stop(self.settings.container_name(color), timeout=int(round(self.settings.stop_timeout)))
        except docker.errors.NotFound:
            pass

    def remove(self, color: str) -> None:
        try:
            self.api.remove_container(self.settings.container_name(color), force=True)
        except docker.errors.NotFound:
            pass

    def logs_tail(self, color: str, lines: int = 20) -> List[str]:
        try:
            raw = self.api.logs(self.settings.container_name(color), tail=lines, stdout=True, stderr=True)
        except docker.errors.APIError:
            return []
        return [line for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]


def _read_env_file(path: Path) -> Dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _reason(exc: BaseException) -> str:
    """The engine's own words, without docker-py's request dump."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation.decode() if isinstance(explanation, bytes) else explanation)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
