"""A real Kubernetes control plane on 127.0.0.1 for the Kubernetes target's tests.

`ControlPlane` starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK as local processes. KWOK simulates the nodes and plays
pod status through Stage objects, so Deployments, ReplicaSets, scheduling,
watches, resource versions, graceful deletion and RBAC behave as in a cluster
while no container ever runs.

The binaries come from `make controlplane` (tests/kubernetes/controlplane/build.sh),
which builds them once into ``${STORMGATE_CACHE:-~/.cache/stormgate}/controlplane``.

Network: every component listens on 127.0.0.1 only. Node addresses and kubelet
endpoints point at 127.0.0.1 as well, so an API server request that goes to a
"kubelet" (logs, exec, node proxy) stays on this machine. Pod IPs and Service
cluster IPs are fake values from ``pod_cidr`` and ``service_cidr``. Nothing
listens on them and tests must not connect to them.

Certificates and keys are made with the openssl command-line tool, so the
helper needs no Python package beyond the standard library, except PyYAML
(a dependency of the kubernetes client) to read KWOK's Stage CRD.
"""

from __future__ import annotations

import base64
import ctypes
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

BINARIES: tuple[str, ...] = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
)
STAGE_CRD_FILE = "kwok-stages-crd.yaml"
BUILD_COMMAND = "make controlplane"

# Annotation that overrides the pod-ready delay of one pod; the value is a Go
# duration such as "1.5s" or "2m".
POD_READY_DELAY_ANNOTATION = "stormgate/pod-ready-delay"
# KWOK manages only the nodes that carry this annotation, so a test can still
# create nodes that nothing simulates (they never become Ready).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"

_LOOPBACK = "127.0.0.1"
_WORK_DIR_PREFIX = "stormgate-controlplane-"
# Holds the PID of the process that owns a work folder, so a later start can
# remove folders left behind by a test run that was killed.
_OWNER_FILE = "owner.pid"
# Certificates outlive any test run; two days keeps a clock jump harmless.
_CERT_DAYS = 2
_PROXY_VARIABLES = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
)


class ControlPlaneError(RuntimeError):
    """The local control plane failed to start, respond or stop."""


class BinaryNotFoundError(ControlPlaneError, FileNotFoundError):
    """A control plane binary has not been built yet."""


def default_bin_dir() -> Path:
    """Return the folder where build.sh installs the binaries.

    STORMGATE_CONTROLPLANE_BIN overrides it; otherwise it is
    ``${STORMGATE_CACHE:-~/.cache/stormgate}/controlplane/bin``, the same rule
    as in build.sh.
    """
    explicit = os.environ.get("STORMGATE_CONTROLPLANE_BIN")
    if explicit:
        return Path(explicit)
    cache_root = os.environ.get("STORMGATE_CACHE") or str(Path.home() / ".cache" / "stormgate")
    return Path(cache_root) / "controlplane" / "bin"


def find_binaries(bin_dir: Path | None = None) -> Path:
    """Return the folder that contains every control plane binary.

    Raises BinaryNotFoundError naming the first missing file and the command
    that builds it.
    """
    folder = bin_dir if bin_dir is not None else default_bin_dir()
    for name in (*BINARIES, STAGE_CRD_FILE):
        path = folder / name
        usable = path.is_file() and (name == STAGE_CRD_FILE or os.access(path, os.X_OK))
        if not usable:
            raise BinaryNotFoundError(
                f"control plane file {name!r} not found in {folder}; "
                f"build the control plane with `{BUILD_COMMAND}` "
                "(runs tests/kubernetes/controlplane/build.sh; the first build takes several minutes)"
            )
    return folder


def _free_port() -> int:
    # NOTE: another process could take the port before the component binds
    # it. The start then fails, and the component's log shows the bind error.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build the environment of a component: no proxies and no KUBECONFIG.

    A proxy variable could send loopback traffic elsewhere, and KUBECONFIG
    could point a component at a real cluster.
    """
    environment = {
        key: value for key, value in os.environ.items() if key not in _PROXY_VARIABLES and key != "KUBECONFIG"
    }
    environment["NO_PROXY"] = environment["no_proxy"] = "127.0.0.1,localhost"
    if extra:
        environment.update(extra)
    return environment


def _kill_with_parent() -> None:
    """Ask Linux to SIGKILL this child when the thread that started it exits.

    Runs between fork and exec. It keeps a SIGKILLed test run from leaving
    etcd or an API server behind.
    """
    # NOTE: the signal fires when the starting *thread* exits, so a
    # ControlPlane must be started from a thread that outlives it.
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _deadline_loop(timeout: float, interval: float = 0.2) -> Iterator[float]:
    """Yield the remaining seconds until `timeout` has passed, sleeping between rounds."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        yield remaining
        time.sleep(min(interval, max(deadline - time.monotonic(), 0)))


def _remove_stale_work_dirs() -> None:
    """Remove work folders whose owner process no longer exists.

    The components of such a folder died with their owner (see
    _kill_with_parent), but a SIGKILLed owner could not delete the folder.
    """
    for folder in Path(tempfile.gettempdir()).glob(_WORK_DIR_PREFIX + "*"):
        try:
            owner = int((folder / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            logger.info("removing control plane work folder %s left by exited process %d", folder, owner)
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            # The PID exists and belongs to another user.
            continue


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(log {path} unreadable: {error})"
    return "\n".join(text.splitlines()[-lines:])


def _validate_subject_part(kind: str, value: str) -> None:
    # openssl -subj uses "/" as separator and "\" as escape; neither appears
    # in Kubernetes user or group names used by tests.
    if not value or "/" in value or "\\" in value or "\n" in value:
        raise ValueError(f"invalid certificate {kind} {value!r}: must be non-empty without '/', '\\' or newlines")


class _Pki:
    """A throwaway certificate authority made with the openssl CLI."""

    _REQUEST_CONFIG = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n"

    def __init__(self, folder: Path, ca_name: str) -> None:
        self.folder = folder
        self.ca_name = ca_name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca_cert = folder / "ca.crt"
        self.ca_key = folder / "ca.key"
        self._request_config = folder / "openssl-request.cnf"

    def _openssl(self, *args: str) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ControlPlaneError("openssl not found on PATH; install it (Debian: apt-get install openssl)")
        result = subprocess.run([openssl, *args], capture_output=True, text=True, check=False, timeout=60)
        if result.returncode != 0:
            raise ControlPlaneError(
                f"openssl {args[0]} failed with exit code {result.returncode}: {result.stderr.strip()}"
            )

    def _new_key(self, path: Path) -> None:
        # P-256 keys: kube-apiserver accepts ECDSA for serving, client and
        # service-account signing keys, and they are much faster to make than RSA.
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
        path.chmod(0o600)

    def create_ca(self) -> None:
        self._request_config.write_text(self._REQUEST_CONFIG)
        extensions = self.folder / "ca-extensions.cnf"
        extensions.write_text(
            "[v3]\n"
            "basicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n"
            "subjectKeyIdentifier = hash\n"
        )
        self._new_key(self.ca_key)
        csr = self.folder / "ca.csr"
        self._openssl(
            "req",
            "-new",
            "-key",
            str(self.ca_key),
            "-subj",
            f"/CN={self.ca_name}",
            "-config",
            str(self._request_config),
            "-out",
            str(csr),
        )
        self._openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-signkey",
            str(self.ca_key),
            "-days",
            str(_CERT_DAYS),
            "-extfile",
            str(extensions),
            "-extensions",
            "v3",
            "-out",
            str(self.ca_cert),
        )

    def issue(
        self,
        name: str,
        *,
        common_name: str,
        organizations: Sequence[str] = (),
        server_addresses: Sequence[str] = (),
        server_names: Sequence[str] = (),
    ) -> tuple[Path, Path]:
        """Issue a certificate signed by the CA; return (certificate, key) paths.

        With server addresses or names the certificate is for serving TLS,
        otherwise for client authentication (CN is the user, O the groups).
        """
        _validate_subject_part("common name", common_name)
        for organization in organizations:
            _validate_subject_part("organization", organization)
        key = self.folder / f"{name}.key"
        cert = self.folder / f"{name}.crt"
        csr = self.folder / f"{name}.csr"
        self._new_key(key)
        subject = "".join(f"/O={organization}" for organization in organizations) + f"/CN={common_name}"
        self._openssl(
            "req",
            "-new",
            "-key",
            str(key),
            "-subj",
            subject,
            "-config",
            str(self._request_config),
            "-out",
            str(csr),
        )
        lines = [
            "[v3]",
            "basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature, keyEncipherment",
        ]
        alt_names = [f"IP:{address}" for address in server_addresses] + [f"DNS:{host}" for host in server_names]
        if alt_names:
            lines.append("extendedKeyUsage = serverAuth")
            lines.append("subjectAltName = " + ", ".join(alt_names))
        else:
            lines.append("extendedKeyUsage = clientAuth")
        extensions = self.folder / f"{name}-extensions.cnf"
        extensions.write_text("\n".join(lines) + "\n")
        self._openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(self.ca_cert),
            "-CAkey",
            str(self.ca_key),
            "-set_serial",
            str(secrets.randbits(63)),
            "-days",
            str(_CERT_DAYS),
            "-extfile",
            str(extensions),
            "-extensions",
            "v3",
            "-out",
            str(cert),
        )
        return cert, key

    def create_key_pair(self, name: str) -> tuple[Path, Path]:
        """Create a key pair for signing service-account tokens; return (private, public)."""
        private = self.folder / f"{name}.key"
        public = self.folder / f"{name}.pub"
        self._new_key(private)
        self._openssl("pkey", "-in", str(private), "-pubout", "-out", str(public))
        return private, public


def _write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    user_name: str,
    user: Mapping[str, str],
) -> Path:
    """Write a kubeconfig with one cluster, one user and one current context.

    JSON is valid YAML, so every kubeconfig loader reads it.
    """
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "stormgate-controlplane",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": user_name, "user": dict(user)}],
        "contexts": [
            {
                "name": user_name,
                "context": {"cluster": "stormgate-controlplane", "user": user_name, "namespace": "default"},
            }
        ],
        "current-context": user_name,
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK on 127.0.0.1.

    Use it as a context manager. Entering starts everything and waits until
    the API server is ready, the controllers and scheduler are healthy, and
    `nodes` simulated nodes are Ready. Leaving stops every process (SIGTERM,
    then SIGKILL after `stop_timeout` seconds) and deletes the work folder.

    Pods scheduled to the simulated nodes become Running at once, with
    Ready=False, and Ready=True after `pod_ready_delay` seconds (plus a random
    0..`pod_ready_jitter` seconds). The annotation POD_READY_DELAY_ANNOTATION
    overrides the delay of one pod, without jitter. Pods of Jobs succeed
    `job_pod_duration` seconds after they become Ready. A deleted pod is
    removed `pod_delete_delay` seconds after its deletion timestamp is set,
    the way a kubelet confirms the end of a graceful deletion.

    Other options:
      pods_per_node: the pod capacity of each simulated node.
      pod_cidr, service_cidr: ranges of the fake pod IPs and Service cluster IPs.
      watch_cache: kube-apiserver's --watch-cache; see compact_etcd.
      bin_dir: folder of the binaries (default: default_bin_dir()).
      log_dir: folder for the components' logs, kept after stop (default: in the work folder).
      keep_work_dir: keep the work folder after stop; STORMGATE_KEEP_CONTROLPLANE=1 does the same.
      start_timeout, stop_timeout: seconds allowed for the whole start, and per process for a stop.
      extra_args: component name (see BINARIES) to additional command line
        flags; a flag given there overrides the default for that flag.
    """

    def __init__(
        self,
        *,
        nodes: int = 3,
        pod_ready_delay: float = 2.0,
        pod_ready_jitter: float = 0.0,
        pod_delete_delay: float = 0.0,
        job_pod_duration: float = 1.0,
        pods_per_node: int = 110,
        pod_cidr: str = "10.128.0.0/14",
        service_cidr: str = "10.96.0.0/16",
        watch_cache: bool = True,
        bin_dir: Path | None = None,
        log_dir: Path | None = None,
        keep_work_dir: bool = False,
        start_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        extra_args: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if nodes < 0:
            raise ValueError(f"invalid nodes {nodes}: must be 0 or more")
        for label, seconds in (
            ("pod_ready_delay", pod_ready_delay),
            ("pod_ready_jitter", pod_ready_jitter),
            ("pod_delete_delay", pod_delete_delay),
            ("job_pod_duration", job_pod_duration),
        ):
            if seconds < 0:
                raise ValueError(f"invalid {label} {seconds}: must be 0 seconds or more")
        if pods_per_node < 1:
            raise ValueError(f"invalid pods_per_node {pods_per_node}: must be 1 or more")
        unknown = set(extra_args or {}) - set(BINARIES)
        if unknown:
            raise ValueError(f"invalid extra_args keys {sorted(unknown)}: expected some of {list(BINARIES)}")

        self.node_count = nodes
        self.pod_ready_delay = pod_ready_delay
        self.pod_ready_jitter = pod_ready_jitter
        self.pod_delete_delay = pod_delete_delay
        self.job_pod_duration = job_pod_duration
        self.pods_per_node = pods_per_node
        self.pod_cidr = pod_cidr
        self.service_cidr = service_cidr
        self.watch_cache = watch_cache
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._bin_dir_override = bin_dir
        self._log_dir_override = log_dir
        self._keep_work_dir = keep_work_dir or os.environ.get("STORMGATE_KEEP_CONTROLPLANE") == "1"
        self._extra_args = {name: list(flags) for name, flags in (extra_args or {}).items()}

        self._components: list[_Component]
        self._work_dir: Path | None
        self._bin_dir: Path | None
        self._pki: _Pki | None
        self._front_proxy: _Pki | None
        self._admin_cert: tuple[Path, Path] | None
        self._sa_private: Path | None
        self._opener: urllib.request.OpenerDirector | None
        self._kubeconfig: Path | None
        self._server: str | None
        self._etcd_url: str | None
        self._kube_version: str
        self._kwok_port: int
        self._node_names: list[str]
        self._issued: int
        self._reset_state()

    # ----- public API -------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Path of the admin kubeconfig (client certificate in group system:masters)."""
        return self._require(self._kubeconfig, "kubeconfig")

    @property
    def server(self) -> str:
        """URL of the API server, https://127.0.0.1:PORT."""
        return self._require(self._server, "server")

    @property
    def ca_file(self) -> Path:
        """Path of the CA certificate that signed the API server's serving certificate."""
        return self._require(self._pki, "ca_file").ca_cert

    @property
    def etcd_url(self) -> str:
        """URL of etcd's client endpoint, http://127.0.0.1:PORT (plain HTTP on loopback)."""
        return self._require(self._etcd_url, "etcd_url")

    @property
    def work_dir(self) -> Path:
        """Temporary folder with certificates, kubeconfigs, etcd data and, by default, logs."""
        return self._require(self._work_dir, "work_dir")

    @property
    def kube_version(self) -> str:
        """gitVersion reported by the API server's /version, such as v1.36.3."""
        return self._require(self._kube_version or None, "kube_version")

    @property
    def node_names(self) -> list[str]:
        """Names of the simulated nodes this control plane created."""
        return list(self._node_names)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component and wait until the cluster is usable.

        On any failure the processes already started are stopped, the work
        folder is removed and the error is raised again.
        """
        if self._work_dir is not None:
            raise ControlPlaneError("control plane already started")
        began = time.monotonic()
        self._bin_dir = find_binaries(self._bin_dir_override)
        _remove_stale_work_dirs()
        self._work_dir = Path(tempfile.mkdtemp(prefix=_WORK_DIR_PREFIX))
        (self._work_dir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        logger.info("starting control plane in %s with binaries from %s", self._work_dir, self._bin_dir)
        try:
            deadline = time.monotonic() + self.start_timeout
            self._create_credentials()
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            # The API server needs a moment to serve a new CRD; creating it
            # before the controllers start hides that wait.
            stage_crd_name = self._create_stage_crd()
            controller_manager_health = self._launch_controller_manager()
            scheduler_health = self._launch_scheduler()
            self._wait_until(
                "kube-controller-manager", deadline, lambda: self._status(controller_manager_health) == 200
            )
            self._wait_until("kube-scheduler", deadline, lambda: self._status(scheduler_health) == 200)
            self._create_stages(stage_crd_name, deadline)
            self._start_kwok(deadline)
            self._wait_for_default_service_account(deadline)
            self.add_nodes(self.node_count, timeout=max(deadline - time.monotonic(), 1.0))
        except BaseException:
            logger.error("control plane failed to start; stopping what was started")
            self.stop()
            raise
        logger.info(
            "control plane %s ready at %s with %d nodes after %.1fs",
            self._kube_version,
            self._server,
            len(self._node_names),
            time.monotonic() - began,
        )

    def stop(self) -> None:
        """Stop every started process, newest first, and remove the work folder.

        Safe to call more than once and after a failed start.
        """
        for component in reversed(self._components):
            self._stop_component(component)
        self._components.clear()
        if self._work_dir is not None:
            if self._keep_work_dir:
                # Without the owner file no later start removes the folder.
                (self._work_dir / _OWNER_FILE).unlink(missing_ok=True)
                logger.info("keeping control plane work folder %s", self._work_dir)
            else:
                shutil.rmtree(self._work_dir, ignore_errors=True)
        self._reset_state()

    def _reset_state(self) -> None:
        """Forget everything a start created, so properties raise until the next start."""
        self._components = []
        self._work_dir = None
        self._bin_dir = None
        self._pki = None
        self._front_proxy = None
        self._admin_cert = None
        self._sa_private = None
        self._opener = None
        self._kubeconfig = None
        self._server = None
        self._etcd_url = None
        self._kube_version = ""
        self._kwok_port = 0
        self._node_names = []
        self._issued = 0

    def add_nodes(self, count: int, *, timeout: float = 60.0) -> list[str]:
        """Create `count` more simulated nodes and wait until each is Ready; return their names."""
        if count < 0:
            raise ValueError(f"invalid count {count}: must be 0 or more")
        names = [f"kwok-node-{index}" for index in range(len(self._node_names), len(self._node_names) + count)]
        for name in names:
            self._request("POST", "/api/v1/nodes", self._node_manifest(name))
        self._node_names.extend(names)
        pending = set(names)
        for _ in _deadline_loop(timeout, interval=0.25):
            for name in sorted(pending):
                node = self._request("GET", f"/api/v1/nodes/{name}")
                if _condition_status(node, "Ready") == "True":
                    pending.discard(name)
            if not pending:
                return names
            self._check_alive()
        raise ControlPlaneError(
            f"timed out after {timeout:.0f}s waiting for nodes {sorted(pending)} to become Ready; "
            f"kwok log:\n{self._log_tail('kwok')}"
        )

    def user_kubeconfig(self, user: str, groups: Sequence[str] = (), *, path: Path | None = None) -> Path:
        """Write a kubeconfig that authenticates as `user` in `groups` with a client certificate.

        RBAC then grants exactly what the test binds to that user or group,
        so a least-privilege test sees only the permissions it granted.
        """
        pki = self._require(self._pki, "user_kubeconfig")
        self._issued += 1
        cert, key = pki.issue(f"user-{self._issued}", common_name=user, organizations=groups)
        target = path or self.work_dir / f"user-{self._issued}.kubeconfig"
        return _write_kubeconfig(
            target,
            server=self.server,
            ca_file=pki.ca_cert,
            user_name=user,
            user={"client-certificate": str(cert), "client-key": str(key)},
        )

    def serviceaccount_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        create: bool = True,
        expiration_seconds: int = 3600,
        path: Path | None = None,
    ) -> Path:
        """Write a kubeconfig that authenticates with a token of ServiceAccount `namespace/name`.

        The token comes from the TokenRequest API, as a pod's projected token
        does. With `create`, the namespace and the ServiceAccount are created
        when missing. The API server rejects `expiration_seconds` below 600.
        """
        if create:
            self._create_if_missing("/api/v1/namespaces", {"metadata": {"name": namespace}})
            self._create_if_missing(
                f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"metadata": {"name": name, "namespace": namespace}},
            )
        response = self._request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        token = response["status"]["token"]
        user_name = f"system:serviceaccount:{namespace}:{name}"
        self._issued += 1
        target = path or self.work_dir / f"serviceaccount-{self._issued}.kubeconfig"
        return _write_kubeconfig(
            target,
            server=self.server,
            ca_file=self.ca_file,
            user_name=user_name,
            user={"token": token},
        )

    def compact_etcd(self, revision: int | None = None) -> int:
        """Compact etcd's history up to `revision` (default: the current revision); return it.

        Afterwards a request that reaches etcd with an older resourceVersion
        fails with 410 Gone. Start the ControlPlane with watch_cache=False to
        send every list and watch to etcd: with the watch cache on (the
        default), kube-apiserver v1.36 still served a list with
        resourceVersionMatch=Exact and a watch from an old resourceVersion
        from memory after a compaction.
        """
        if revision is None:
            # An empty range request returns the store's current revision in its header.
            response = self._etcd_request("/v3/kv/range", {"key": base64.b64encode(b"\0").decode(), "limit": 1})
            revision = int(response["header"]["revision"])
        self._etcd_request("/v3/kv/compaction", {"revision": revision, "physical": True})
        logger.info("compacted etcd up to revision %d", revision)
        return revision

    # ----- start-up steps ---------------------------------------------------

    def _create_credentials(self) -> None:
        pki = _Pki(self.work_dir / "pki", "stormgate-test-ca")
        pki.create_ca()
        self._pki = pki
        # The aggregation layer authenticates the API server to extension API
        # servers with a client certificate from a CA of its own. Without it,
        # the controller manager and scheduler log errors about a missing request-header CA.
        front_proxy = _Pki(self.work_dir / "pki" / "front-proxy", "stormgate-test-front-proxy-ca")
        front_proxy.create_ca()
        self._front_proxy = front_proxy
        self._admin_cert = pki.issue("admin", common_name="stormgate-admin", organizations=["system:masters"])
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(self._admin_cert[0]), str(self._admin_cert[1]))
        # An empty ProxyHandler: urllib would otherwise send loopback requests
        # to a proxy named in the environment.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=context),
        )

    def _start_etcd(self, deadline: float) -> None:
        client_port, peer_port = _free_port(), _free_port()
        client_url = f"http://{_LOOPBACK}:{client_port}"
        peer_url = f"http://{_LOOPBACK}:{peer_port}"
        self._etcd_url = client_url
        self._launch(
            "etcd",
            [
                "--name=stormgate",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=stormgate={peer_url}",
                "--initial-cluster-state=new",
                # Test data is thrown away, so durability is not worth an fsync per write.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait_until("etcd", deadline, lambda: self._etcd_healthy())

    def _start_apiserver(self, deadline: float) -> None:
        pki = self._require(self._pki, "apiserver")
        port = _free_port()
        self._server = f"https://{_LOOPBACK}:{port}"
        serving_cert, serving_key = pki.issue(
            "apiserver",
            common_name="kube-apiserver",
            server_addresses=[_LOOPBACK, _first_address(self.service_cidr)],
            server_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
        )
        self._sa_private, sa_public = pki.create_key_pair("service-account")
        front_proxy = self._require(self._front_proxy, "apiserver")
        proxy_client_cert, proxy_client_key = front_proxy.issue("front-proxy-client", common_name="front-proxy-client")
        self._kubeconfig = _write_kubeconfig(
            self.work_dir / "admin.kubeconfig",
            server=self._server,
            ca_file=pki.ca_cert,
            user_name="stormgate-admin",
            user={
                "client-certificate": str(self._require(self._admin_cert, "admin")[0]),
                "client-key": str(self._require(self._admin_cert, "admin")[1]),
            },
        )
        self._launch(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={_LOOPBACK}",
                f"--advertise-address={_LOOPBACK}",
                f"--secure-port={port}",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                f"--tls-cert-file={serving_cert}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={sa_public}",
                f"--service-account-signing-key-file={self._sa_private}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={self.service_cidr}",
                f"--requestheader-client-ca-file={front_proxy.ca_cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={proxy_client_cert}",
                f"--proxy-client-key-file={proxy_client_key}",
                # The reconciler would publish the advertise address, 127.0.0.1,
                # as the endpoint of the "kubernetes" Service, and EndpointSlice
                # validation rejects loopback addresses.
                "--endpoint-reconciler-type=none",
                # Reach "kubelets" by InternalIP only (127.0.0.1, see the node
                # manifest); the default tries the Hostname first, which means a DNS lookup.
                "--kubelet-preferred-address-types=InternalIP",
                # Only compact_etcd compacts, so a test decides when old resourceVersions expire.
                "--etcd-compaction-interval=0",
                f"--watch-cache={'true' if self.watch_cache else 'false'}",
                "--profiling=false",
            ],
        )
        self._wait_until("kube-apiserver", deadline, lambda: self._status("/readyz") == 200)
        self._kube_version = str(self._request("GET", "/version")["gitVersion"])

    def _component_kubeconfig(self, name: str, user: str, groups: Sequence[str] = ()) -> Path:
        pki = self._require(self._pki, name)
        cert, key = pki.issue(name, common_name=user, organizations=groups)
        return _write_kubeconfig(
            self.work_dir / f"{name}.kubeconfig",
            server=self.server,
            ca_file=pki.ca_cert,
            user_name=user,
            user={"client-certificate": str(cert), "client-key": str(key)},
        )

    def _launch_controller_manager(self) -> str:
        """Start kube-controller-manager; return the URL of its health check."""
        pki = self._require(self._pki, "kube-controller-manager")
        kubeconfig = self._component_kubeconfig("kube-controller-manager", "system:kube-controller-manager")
        port = _free_port()
        self._launch(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={_LOOPBACK}",
                f"--secure-port={port}",
                f"--cert-dir={self.work_dir / 'controller-manager-certs'}",
                "--leader-elect=false",
                # Each controller acts as its own ServiceAccount, so RBAC applies as in a cluster.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self._sa_private}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                # The default client rate limit (20 requests per second) makes
                # the ReplicaSet controller take about 50 s to create 1000 pods.
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--profiling=false",
            ],
        )
        return f"https://{_LOOPBACK}:{port}/healthz"

    def _launch_scheduler(self) -> str:
        """Start kube-scheduler; return the URL of its health check."""
        kubeconfig = self._component_kubeconfig("kube-scheduler", "system:kube-scheduler")
        config = self.work_dir / "kube-scheduler.json"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    # Raised from the default 50 requests per second, as for the controller manager.
                    "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 200, "burst": 400},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        port = _free_port()
        self._launch(
            "kube-scheduler",
            [
                f"--config={config}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={_LOOPBACK}",
                f"--secure-port={port}",
                f"--cert-dir={self.work_dir / 'scheduler-certs'}",
            ],
        )
        return f"https://{_LOOPBACK}:{port}/healthz"

    def _create_stage_crd(self) -> str:
        """Create KWOK's Stage CRD, copied next to the binaries by build.sh; return its name."""
        import yaml  # PyYAML, installed with the kubernetes client

        crd_path = self._require(self._bin_dir, "stages") / STAGE_CRD_FILE
        crd = yaml.safe_load(crd_path.read_text())
        self._create_if_missing("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        return str(crd["metadata"]["name"])

    def _create_stages(self, crd_name: str, deadline: float) -> None:
        """Create this helper's node and pod stages once the Stage CRD is served."""
        crd_url = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}"
        self._wait_until(
            "Stage CRD",
            deadline,
            lambda: _condition_status(self._request("GET", crd_url), "Established") == "True",
        )
        for stage in _stages(
            kube_version=self._kube_version,
            pod_ready_delay=self.pod_ready_delay,
            pod_ready_jitter=self.pod_ready_jitter,
            pod_delete_delay=self.pod_delete_delay,
            job_pod_duration=self.job_pod_duration,
        ):
            self._request("POST", "/apis/kwok.x-k8s.io/v1alpha1/stages", stage)

    def _start_kwok(self, deadline: float) -> None:
        kubeconfig = self._component_kubeconfig("kwok", "kwok-controller", ["system:masters"])
        self._kwok_port = _free_port()
        self._launch(
            "kwok",
            [
                f"--kubeconfig={kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
                "--enable-crds=Stage",
                f"--cidr={self.pod_cidr}",
                f"--node-ip={_LOOPBACK}",
                f"--node-port={self._kwok_port}",
                f"--server-address={_LOOPBACK}:{self._kwok_port}",
                "--node-lease-duration-seconds=40",
            ],
            # KWOK loads $KWOK_WORKDIR/kwok.yaml (default ~/.kwok/kwok.yaml) when
            # it exists, so an empty folder keeps a user's file out. Without a
            # configuration file KWOK uses its built-in defaults.
            environment={"KWOK_WORKDIR": str(self.work_dir / "kwok")},
        )
        self._wait_until("kwok", deadline, lambda: self._status(f"http://{_LOOPBACK}:{self._kwok_port}/healthz") == 200)

    def _wait_for_default_service_account(self, deadline: float) -> None:
        # Pods in "default" are rejected until the controller manager creates
        # this ServiceAccount, so a test that starts right away would see errors.
        self._wait_until(
            "ServiceAccount default/default",
            deadline,
            lambda: self._status("/api/v1/namespaces/default/serviceaccounts/default") == 200,
        )

    def _node_manifest(self, name: str) -> dict[str, Any]:
        capacity = {"cpu": "32", "memory": "256Gi", "pods": str(self.pods_per_node), "ephemeral-storage": "1Ti"}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {
                    KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE,
                    "node.alpha.kubernetes.io/ttl": "0",
                },
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            # The API server keeps the status of a created Node; KWOK's stages
            # then add conditions and node info.
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": _LOOPBACK}],
            },
        }

    # ----- processes --------------------------------------------------------

    def _launch(self, name: str, args: list[str], environment: Mapping[str, str] | None = None) -> None:
        binary = self._require(self._bin_dir, name) / name
        log_dir = self._log_dir_override or self.work_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        command = [str(binary), *args, *self._extra_args.get(name, [])]
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                env=_child_environment(environment),
                # A session of its own: Ctrl-C in the terminal reaches only the
                # test process, which then stops the components in order.
                start_new_session=True,
                preexec_fn=_kill_with_parent,
            )
        self._components.append(_Component(name, process, log_path))
        logger.info("started %s (pid %d), log %s", name, process.pid, log_path)

    def _stop_component(self, component: _Component) -> None:
        process = component.process
        if process.poll() is not None:
            logger.info("%s (pid %d) had already exited with code %s", component.name, process.pid, process.returncode)
            return
        process.terminate()
        try:
            process.wait(timeout=self.stop_timeout)
            logger.info("stopped %s (pid %d)", component.name, process.pid)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s (pid %d) still running %.0fs after SIGTERM; sending SIGKILL",
                component.name,
                process.pid,
                self.stop_timeout,
            )
            process.kill()
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.error("%s (pid %d) did not exit after SIGKILL", component.name, process.pid)

    def _check_alive(self) -> None:
        for component in self._components:
            code = component.process.poll()
            if code is not None:
                raise ControlPlaneError(
                    f"{component.name} exited with code {code}; last lines of {component.log_path}:\n"
                    f"{_tail(component.log_path)}"
                )

    def _log_tail(self, name: str) -> str:
        for component in self._components:
            if component.name == name:
                return _tail(component.log_path)
        return f"({name} not started)"

    def _wait_until(self, what: str, deadline: float, ready: Callable[[], bool]) -> None:
        """Poll `ready` until it returns True, a component exits, or `deadline` (monotonic) passes.

        A timeout error carries the log of the component named `what`, or
        else of the newest component.
        """
        began = time.monotonic()
        last_error: Exception | None = None
        for _ in _deadline_loop(deadline - time.monotonic(), interval=0.1):
            self._check_alive()
            try:
                if ready():
                    logger.info("%s ready after %.2fs", what, time.monotonic() - began)
                    return
            except (OSError, ControlPlaneError, http.client.HTTPException, KeyError, ValueError) as error:
                last_error = error
        self._check_alive()
        named = [component for component in self._components if component.name == what]
        suspects = named or self._components
        log_hint = ""
        if suspects:
            log_hint = f"; last lines of {suspects[-1].log_path}:\n{_tail(suspects[-1].log_path)}"
        raise ControlPlaneError(
            f"timed out after {time.monotonic() - began:.1f}s waiting for {what} (last error: {last_error}){log_hint}"
        )

    # ----- HTTP -------------------------------------------------------------

    def _status(self, path_or_url: str) -> int:
        """Return the HTTP status of a GET; API server paths use admin credentials."""
        if path_or_url.startswith("/"):
            try:
                self._send("GET", path_or_url)
                return 200
            except _HttpStatusError as error:
                return error.status
        # The controller manager and scheduler serve self-signed certificates
        # they generate themselves; these health checks only go to 127.0.0.1.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        try:
            with opener.open(path_or_url, timeout=5) as response:
                status: int = response.status
                return status
        except urllib.error.HTTPError as error:
            return error.code

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one request to the API server as the admin user; return the decoded JSON body."""
        payload = self._send(method, path, body)
        decoded: dict[str, Any] = json.loads(payload) if payload.strip() else {}
        return decoded

    def _send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> bytes:
        """Send one request to the API server as the admin user; return the raw response body.

        Raises _HttpStatusError for any status of 400 or more.
        """
        opener = self._require(self._opener, "request")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with opener.open(request, timeout=15) as response:
                payload: bytes = response.read()
                return payload
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise _HttpStatusError(error.code, f"{method} {path} failed with HTTP {error.code}: {detail}") from None

    def _create_if_missing(self, collection: str, body: Mapping[str, Any]) -> None:
        try:
            self._request("POST", collection, body)
        except _HttpStatusError as error:
            if error.status != 409:
                raise

    def _etcd_request(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST to etcd's gRPC gateway (JSON over HTTP on the client port)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            self.etcd_url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with opener.open(request, timeout=15) as response:
                decoded: dict[str, Any] = json.loads(response.read())
                return decoded
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise ControlPlaneError(f"etcd {path} failed with HTTP {error.code}: {detail}") from None

    def _etcd_healthy(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.etcd_url + "/health", timeout=5) as response:
            return bool(json.loads(response.read()).get("health") == "true")

    @staticmethod
    def _require(value: _T | None, what: str) -> _T:
        if value is None:
            raise ControlPlaneError(f"{what} is not available: the control plane is not started")
        return value


class _HttpStatusError(ControlPlaneError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _condition_status(obj: Mapping[str, Any], condition_type: str) -> str | None:
    for condition in obj.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == condition_type:
            status = condition.get("status")
            return str(status) if status is not None else None
    return None


def _first_address(cidr: str) -> str:
    """Return the first usable address of an IPv4 CIDR: the ClusterIP of the "kubernetes" Service."""
    import ipaddress

    network = ipaddress.ip_network(cidr, strict=False)
    return str(network.network_address + 1)


# ----- KWOK stages ------------------------------------------------------------
# Stages are KWOK's state machine. For every Node or Pod whose fields match a
# stage's selector, KWOK waits the stage's delay and then deletes the object or
# applies the stage's status template. The template is a Go template that
# renders YAML, and KWOK merges it into .status with a strategic merge patch.

_NODE_CONDITIONS = (
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("NetworkUnavailable", "False", "RouteCreated", "simulated node network is configured"),
)


def _jq(key: str, operator: str, values: Sequence[str] = ()) -> dict[str, Any]:
    expression: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        expression["values"] = list(values)
    return {"jq": expression}


def _stage(
    name: str,
    kind: str,
    match: list[dict[str, Any]],
    delay_ms: int,
    next_step: dict[str, Any],
    *,
    jitter_ms: int | None = None,
    delay_annotation: str | None = None,
) -> dict[str, Any]:
    delay: dict[str, Any] = {"durationMilliseconds": delay_ms}
    if jitter_ms is not None:
        # KWOK picks the delay uniformly between durationMilliseconds and jitterDurationMilliseconds.
        delay["jitterDurationMilliseconds"] = jitter_ms
    if delay_annotation is not None:
        from_annotation = {"jq": {"expression": f'.metadata.annotations["{delay_annotation}"]'}}
        delay["durationFrom"] = from_annotation
        if jitter_ms is not None:
            # KWOK uses the smaller of the two when the jitter bound is not
            # above the delay, so reading the bound from the same annotation
            # makes an annotated pod wait exactly its annotated delay.
            delay["jitterDurationFrom"] = from_annotation
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "stormgate-controlplane"}},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": match},
            "delay": delay,
            "next": next_step,
        },
    }


def _node_ready_template(kube_version: str) -> str:
    lines = ["{{ $now := Now }}", "conditions:"]
    for condition_type, status, reason, message in _NODE_CONDITIONS:
        lines += [
            f"- type: {condition_type}",
            f'  status: "{status}"',
            f"  reason: {reason}",
            f"  message: {message}",
            "  lastHeartbeatTime: {{ $now | Quote }}",
            "  lastTransitionTime: {{ $now | Quote }}",
        ]
    lines += [
        "daemonEndpoints:",
        "  kubeletEndpoint:",
        "    Port: {{ NodePort }}",
        "nodeInfo:",
        "  architecture: amd64",
        "  operatingSystem: linux",
        f"  kubeletVersion: {kube_version}",
        "  kubeProxyVersion: ''",
        "  containerRuntimeVersion: kwok-{{ Version }}",
        "  kernelVersion: ''",
        "  osImage: ''",
        "  machineID: ''",
        "  systemUUID: ''",
        "  bootID: ''",
        "phase: Running",
    ]
    return "\n".join(lines) + "\n"


_POD_START_TEMPLATE = """\
{{ $now := Now }}
{{ $hostNetwork := or .spec.hostNetwork false }}
{{ $podIP := PodIPWith .spec.nodeName $hostNetwork .metadata.uid .metadata.name .metadata.namespace }}
{{ $hostIP := NodeIPWith .spec.nodeName }}
phase: Running
startTime: {{ $now | Quote }}
hostIP: {{ $hostIP | Quote }}
hostIPs:
- ip: {{ $hostIP | Quote }}
podIP: {{ $podIP | Quote }}
podIPs:
- ip: {{ $podIP | Quote }}
conditions:
- type: PodReadyToStartContainers
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Initialized
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "False"
  reason: ContainersNotReady
  message: simulated containers are starting
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "False"
  reason: ContainersNotReady
  message: simulated containers are starting
  lastTransitionTime: {{ $now | Quote }}
{{ if .spec.initContainers }}
initContainerStatuses:
{{ range .spec.initContainers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: ""
  ready: true
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: ""
  ready: false
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
"""

_POD_READY_TEMPLATE = """\
{{ $now := Now }}
{{ $started := .status.startTime }}
conditions:
- type: ContainersReady
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: ""
  ready: true
  started: true
  restartCount: 0
  state:
    running:
      startedAt: {{ $started | Quote }}
{{ end }}
"""

_POD_SUCCEEDED_TEMPLATE = """\
{{ $now := Now }}
{{ $started := .status.startTime }}
phase: Succeeded
conditions:
- type: ContainersReady
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "False"
  reason: PodCompleted
  lastTransitionTime: {{ $now | Quote }}
- type: PodReadyToStartContainers
  status: "False"
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  imageID: ""
  ready: false
  started: false
  restartCount: 0
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $started | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
"""

_READY_STATUS = '.status.conditions.[] | select( .type == "Ready" ) | .status'


def _stages(
    *,
    kube_version: str,
    pod_ready_delay: float,
    pod_ready_jitter: float,
    pod_delete_delay: float,
    job_pod_duration: float,
) -> list[dict[str, Any]]:
    """Build the Stage objects that drive simulated nodes and pods."""
    ready_ms = round(pod_ready_delay * 1000)
    not_deleted = _jq(".metadata.deletionTimestamp", "DoesNotExist")
    return [
        # A node without a Ready=True condition (new, or marked Unknown by the
        # node lifecycle controller) becomes Ready. KWOK renews the node's
        # Lease, which keeps it Ready afterwards.
        _stage(
            "stormgate-node-ready",
            "Node",
            [not_deleted, _jq(_READY_STATUS, "NotIn", ["True"])],
            0,
            {"statusTemplate": _node_ready_template(kube_version)},
        ),
        # A scheduled pod gets its IPs and running containers at once, but
        # stays Ready=False until the next stage.
        _stage(
            "stormgate-pod-start",
            "Pod",
            [not_deleted, _jq(".spec.nodeName", "Exists"), _jq(".status.podIP", "DoesNotExist")],
            0,
            {"statusTemplate": _POD_START_TEMPLATE},
        ),
        _stage(
            "stormgate-pod-ready",
            "Pod",
            [
                not_deleted,
                _jq(".status.phase", "In", ["Running"]),
                _jq(".status.podIP", "Exists"),
                _jq(_READY_STATUS, "In", ["False"]),
            ],
            ready_ms,
            {"statusTemplate": _POD_READY_TEMPLATE},
            jitter_ms=ready_ms + round(pod_ready_jitter * 1000) if pod_ready_jitter > 0 else None,
            delay_annotation=POD_READY_DELAY_ANNOTATION,
        ),
        _stage(
            "stormgate-pod-succeed",
            "Pod",
            [
                not_deleted,
                _jq(".status.phase", "In", ["Running"]),
                _jq(_READY_STATUS, "In", ["True"]),
                _jq(".metadata.ownerReferences.[].kind", "In", ["Job"]),
            ],
            round(job_pod_duration * 1000),
            {"statusTemplate": _POD_SUCCEEDED_TEMPLATE},
        ),
        # The end of a graceful deletion: a kubelet deletes the pod with a
        # grace period of 0 once its containers have stopped. Finalizers are
        # left alone, so a pod with finalizers stays until they are removed.
        _stage(
            "stormgate-pod-delete",
            "Pod",
            [_jq(".metadata.deletionTimestamp", "Exists")],
            round(pod_delete_delay * 1000),
            {"delete": True},
        ),
    ]
