#!/usr/bin/env python3
"""Checks deploy/kubernetes/ without a cluster: every YAML document parses and is a kind these files use,
with the fields the API requires (and no misspelt ones where a typo would pass silently); every reference
between objects resolves (selectors, ports, volumes, ConfigMaps, Secrets, the headless Service, the PDB,
the gateway's upstream); the server's flags are ones it knows and agree with the manifests (ports, the
grace period, memory, threads); nginx -t and promtool check config where they are installed.

Both variants are checked: the directory as `kubectl apply -f` applies it, and the same with gpu/'s
StatefulSet in place of the host one. Skips (exit 77) without python3-yaml.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

try:
    import yaml
except ImportError:
    print("SKIP: python3-yaml is not installed (apt-get install python3-yaml)")
    sys.exit(77)

SOURCE = Path(os.environ.get("TRAMS_SOURCE_DIR") or Path(__file__).resolve().parents[3])
K8S = SOURCE / "deploy" / "kubernetes"
SCRAPE_FILE = K8S / "prometheus" / "trams-scrape.yml"
SERVER_IMAGE = "trams-serve"        # images whose containers run trams-server (ENTRYPOINT)
SERVER_UID = 10001                  # the images' trams user
FLUSH_MARGIN_S = 15                 # the grace period's room for writing sessions after the drain
MEMORY_HEADROOM_MIB = 256           # weights, gRPC buffers, allocator slack beyond the budgets
KNOWN = {("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "StatefulSet"), ("apps/v1", "Deployment"),
         ("policy/v1", "PodDisruptionBudget")}
REQUIRED = {
    "ConfigMap": ["data"],
    "Service": ["spec.ports"],
    "StatefulSet": ["spec.serviceName", "spec.replicas", "spec.selector.matchLabels",
                    "spec.template.metadata.labels", "spec.template.spec.containers"],
    "Deployment": ["spec.replicas", "spec.selector.matchLabels", "spec.template.metadata.labels",
                   "spec.template.spec.containers"],
    "PodDisruptionBudget": ["spec.selector.matchLabels"],
}
# The API's field names where a misspelt one would be dropped with at most a warning (no probe, no
# security setting). Paths: kind, then keys ("*" any list item).
_POD = ("volumes initContainers containers restartPolicy terminationGracePeriodSeconds activeDeadlineSeconds "
        "dnsPolicy nodeSelector serviceAccountName automountServiceAccountToken nodeName hostNetwork hostPID "
        "hostIPC shareProcessNamespace securityContext imagePullSecrets hostname subdomain affinity "
        "schedulerName tolerations hostAliases priorityClassName priority dnsConfig readinessGates "
        "runtimeClassName enableServiceLinks preemptionPolicy overhead topologySpreadConstraints "
        "setHostnameAsFQDN os hostUsers schedulingGates resourceClaims")
_CONTAINER = ("name image command args workingDir ports envFrom env resources resizePolicy restartPolicy "
              "volumeMounts volumeDevices livenessProbe readinessProbe startupProbe lifecycle "
              "terminationMessagePath terminationMessagePolicy imagePullPolicy securityContext stdin "
              "stdinOnce tty")
_PROBE = ("exec httpGet tcpSocket grpc initialDelaySeconds timeoutSeconds periodSeconds successThreshold "
          "failureThreshold terminationGracePeriodSeconds")
_CSEC = ("capabilities privileged seLinuxOptions windowsOptions runAsUser runAsGroup runAsNonRoot "
         "readOnlyRootFilesystem allowPrivilegeEscalation procMount seccompProfile appArmorProfile")
_PSEC = ("seLinuxOptions windowsOptions runAsUser runAsGroup runAsNonRoot supplementalGroups fsGroup sysctls "
         "fsGroupChangePolicy seccompProfile appArmorProfile")
_TOP = "apiVersion kind metadata spec data binaryData immutable"
ALLOWED = {
    (): _TOP, ("metadata",): "name namespace labels annotations",
    ("spec",): {"StatefulSet": "replicas selector template volumeClaimTemplates serviceName "
                               "podManagementPolicy updateStrategy revisionHistoryLimit minReadySeconds "
                               "persistentVolumeClaimRetentionPolicy ordinals",
                "Deployment": "replicas selector template strategy minReadySeconds revisionHistoryLimit paused "
                              "progressDeadlineSeconds",
                "Service": "ports selector clusterIP clusterIPs type externalIPs sessionAffinity "
                           "loadBalancerIP loadBalancerSourceRanges externalName externalTrafficPolicy "
                           "healthCheckNodePort "
                           "publishNotReadyAddresses sessionAffinityConfig ipFamilies ipFamilyPolicy "
                           "allocateLoadBalancerNodePorts loadBalancerClass internalTrafficPolicy",
                "PodDisruptionBudget": "minAvailable maxUnavailable selector unhealthyPodEvictionPolicy"},
    ("spec", "template"): "metadata spec", ("spec", "template", "metadata"): "name labels annotations",
    ("spec", "template", "spec"): _POD, ("spec", "template", "spec", "securityContext"): _PSEC,
    ("spec", "template", "spec", "containers", "*"): _CONTAINER,
    ("spec", "template", "spec", "containers", "*", "securityContext"): _CSEC,
    ("spec", "template", "spec", "containers", "*", "resources"): "requests limits claims",
    ("spec", "template", "spec", "containers", "*", "lifecycle"): "preStop postStart",
    ("spec", "ports", "*"): "name protocol appProtocol port targetPort nodePort",
}
for _p in ("livenessProbe", "readinessProbe", "startupProbe"):
    ALLOWED[("spec", "template", "spec", "containers", "*", _p)] = _PROBE


def get(obj, dotted, default=None):
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj


def load_file(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifest_files():
    files = sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p != SCRAPE_FILE)
    assert files, f"no manifests under {K8S}"
    return files


def variants():
    """name -> objects: what `kubectl apply -f deploy/kubernetes/` makes, and with gpu/ in place."""
    base = [d for p in manifest_files() if p.parent == K8S for d in load_file(p)]
    gpu = [d for p in manifest_files() if p.parent == K8S / "gpu" for d in load_file(p)]
    replaced = {(d["kind"], d["metadata"]["name"]) for d in gpu}
    return {"host": base, "gpu": [d for d in base if (d["kind"], d["metadata"]["name"]) not in replaced] + gpu}


def service(objs, name):
    found = [o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == name]
    return found[0] if found else None


def workloads(objs):
    return [o for o in objs if o["kind"] in ("StatefulSet", "Deployment")]


def pod_label_sets(w):
    """The labels of each pod the workload makes (a StatefulSet adds each pod's name and index)."""
    labels = w["spec"]["template"]["metadata"]["labels"]
    if w["kind"] != "StatefulSet":
        return [dict(labels)]
    name = w["metadata"]["name"]
    return [dict(labels, **{"statefulset.kubernetes.io/pod-name": f"{name}-{i}",
                            "apps.kubernetes.io/pod-index": str(i)}) for i in range(w["spec"]["replicas"])]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def containers(w):
    return w["spec"]["template"]["spec"]["containers"]


def server_containers(w):
    return [c for c in containers(w) if c["image"].split(":")[0].split("/")[-1] == SERVER_IMAGE]


def port_of(container, port):
    """The container port a probe or targetPort names (by name or number), or None."""
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    return None


def mib(quantity):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?", str(quantity))
    assert m, f"memory quantity {quantity!r}"
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9,
             "T": 1e12}[m.group(2)]
    return float(m.group(1)) * scale / 2**20


def cpus(quantity):
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def readme_secrets():
    """Secret name -> keys, from the README's `kubectl create secret generic` commands."""
    secrets = {}
    for m in re.finditer(r"kubectl create secret generic (\S+)((?: --from-(?:literal|file)=\S+)+)",
                         (K8S / "README.md").read_text(encoding="utf-8")):
        keys = re.findall(r"--from-(?:literal|file)=([^=\s]+)", m.group(2))
        secrets[m.group(1)] = {os.path.basename(k) for k in keys}
    return secrets


def parse_flags(text, where):
    flags = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"--(\w+)(?:=(.*))?", line.strip())
        assert m, f"{where}:{n}: not a flag line: {line!r}"
        flags[m.group(1)] = m.group(2) if m.group(2) is not None else "true"
    return flags


class Pod:
    """One workload's pod template with the objects of its variant, to resolve what it references."""

    def __init__(self, w, objs):
        self.w, self.objs, self.spec = w, objs, w["spec"]["template"]["spec"]
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        self.claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}

    def config_map(self, name):
        found = [o for o in self.objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
        return found[0] if found else None

    def file(self, container, path):
        """(volume, name of the file inside it, text or None) for a path the container reads."""
        mounts = [m for m in container.get("volumeMounts", [])
                  if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert mounts, f"{path} is under no volumeMount of container {container['name']}"
        mount = max(mounts, key=lambda m: len(m["mountPath"]))
        rel = path[len(mount["mountPath"].rstrip("/")) + 1:]
        vol = self.volumes.get(mount["name"], {})
        source = vol.get("configMap") or vol.get("secret") or {}
        items = {i["path"]: i["key"] for i in source.get("items", [])}
        key = items.get(rel, rel)
        if "configMap" in vol:
            cm = self.config_map(vol["configMap"]["name"])
            assert cm and key in cm["data"], f"{path}: ConfigMap {vol['configMap']['name']} has no key {key}"
            return vol, key, cm["data"][key]
        if "secret" in vol:
            keys = readme_secrets().get(vol["secret"]["secretName"], set())
            assert key in keys, f"{path}: Secret {vol['secret']['secretName']} is created with keys {keys}"
        return vol, key, None

    def server_flags(self, container):
        """The flags trams-server runs with: its --flagfile from the ConfigMap, then its args."""
        args = parse_flags("\n".join(container.get("args", [])), f"{self.w['metadata']['name']} args")
        assert "flagfile" in args, f"{container['name']}: args name no --flagfile"
        _, _, text = self.file(container, args.pop("flagfile"))
        flags = parse_flags(text, "flagfile")
        flags.update(args)
        return flags


def prestop_sleep(container):
    pre = get(container, "lifecycle.preStop", {})
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = get(pre, "exec.command", [])
    assert len(cmd) == 2 and cmd[0] == "sleep", f"{container['name']}: preStop is not `sleep N`: {cmd}"
    return int(cmd[1])


def listen_port(address):
    return int(address.rsplit(":", 1)[1])


class ManifestsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.variants = variants()

    def each(self):
        for name, objs in self.variants.items():
            with self.subTest(variant=name):
                yield objs

    def each_pod(self, objs):
        for w in workloads(objs):
            with self.subTest(workload=w["metadata"]["name"]):
                yield w, Pod(w, objs)

    def test_documents_are_known_kinds_with_required_fields(self):
        for path in manifest_files():
            for doc in load_file(path):
                with self.subTest(file=str(path.relative_to(K8S)), name=get(doc, "metadata.name")):
                    kind = doc.get("kind")
                    self.assertIn((doc.get("apiVersion"), kind), KNOWN)
                    self.assertRegex(get(doc, "metadata.name", ""), r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
                    for field in REQUIRED[kind]:
                        self.assertTrue(get(doc, field), f"{kind} lacks {field}")
                    self.assert_allowed_keys(doc, kind, doc, ())

    def assert_allowed_keys(self, doc, kind, node, path):
        allowed = ALLOWED.get(path)
        if isinstance(allowed, dict):
            allowed = allowed.get(kind)
        if isinstance(node, dict):
            if allowed is not None:
                self.assertFalse(set(node) - set(allowed.split()), f"unknown fields at {'.'.join(path)}")
            for k, v in node.items():
                self.assert_allowed_keys(doc, kind, v, path + (k,))
        elif isinstance(node, list):
            for item in node:
                self.assert_allowed_keys(doc, kind, item, path + ("*",))

    def test_workloads(self):
        for objs in self.each():
            for w, pod in self.each_pod(objs):
                selector = w["spec"]["selector"]["matchLabels"]
                self.assertTrue(selects(selector, w["spec"]["template"]["metadata"]["labels"]),
                                "selector does not match its own template")
                names = [p["name"] for c in containers(w) for p in c.get("ports", [])]
                self.assertEqual(len(names), len(set(names)), "container port names repeat")
                self.assertTrue(all(len(n) <= 15 for n in names), "a port name is longer than 15")
                for c in containers(w):
                    for kind in ("requests", "limits"):
                        for res in ("cpu", "memory"):
                            self.assertIn(res, get(c, f"resources.{kind}", {}), f"{c['name']} {kind}.{res}")

    def test_gpu_variant_replaces_the_host_statefulset(self):
        host = {o["metadata"]["name"]: o for o in workloads(self.variants["host"])}
        gpu = [o for p in manifest_files() if p.parent == K8S / "gpu" for o in load_file(p)]
        self.assertTrue(gpu, "no gpu/ manifests")
        for o in gpu:
            with self.subTest(name=o["metadata"]["name"]):
                self.assertIn(o["metadata"]["name"], host, "replaces nothing in the directory")
                old = host[o["metadata"]["name"]]
                for field in ("spec.serviceName", "spec.replicas", "spec.selector", "spec.template.metadata"):
                    self.assertEqual(get(o, field), get(old, field), f"{field} differs from the host variant")

    def test_probes_name_container_ports(self):
        for objs in self.each():
            for w, _ in self.each_pod(objs):
                for c in containers(w):
                    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                        p = c.get(probe)
                        if p is None:
                            continue
                        port = get(p, "grpc.port") or get(p, "httpGet.port") or get(p, "tcpSocket.port")
                        if "grpc" in p:
                            self.assertIsInstance(port, int, "gRPC probe ports are numbers")
                        if "exec" not in p:
                            self.assertIsNotNone(port_of(c, port), f"{c['name']} {probe} port {port}")

    def test_services_select_pods_and_target_their_ports(self):
        for objs in self.each():
            for s in (o for o in objs if o["kind"] == "Service"):
                with self.subTest(service=s["metadata"]["name"]):
                    selector = s["spec"].get("selector")
                    matched = [w for w in workloads(objs)
                               if any(selects(selector, labels) for labels in pod_label_sets(w))]
                    self.assertTrue(matched, f"selector {selector} matches no pod")
                    ports = s["spec"]["ports"]
                    if len(ports) > 1:
                        self.assertTrue(all(p.get("name") for p in ports), "ports need names")
                    for w in matched:
                        for p in ports:
                            target = p.get("targetPort", p["port"])
                            self.assertTrue(any(port_of(c, target) for c in containers(w)),
                                            f"targetPort {target} is no port of {w['metadata']['name']}")

    def test_statefulset_service_is_headless(self):
        for objs in self.each():
            for w in (o for o in objs if o["kind"] == "StatefulSet"):
                with self.subTest(statefulset=w["metadata"]["name"]):
                    svc = service(objs, w["spec"]["serviceName"])
                    self.assertTrue(svc, f"no Service {w['spec']['serviceName']}")
                    self.assertEqual(get(svc, "spec.clusterIP"), "None", "serviceName is not headless")
                    self.assertTrue(any(selects(svc["spec"]["selector"], pl) for pl in pod_label_sets(w)))

    def test_volumes_config_maps_and_secrets_resolve(self):
        secrets = readme_secrets()
        for objs in self.each():
            for w, pod in self.each_pod(objs):
                for c in containers(w):
                    for m in c.get("volumeMounts", []):
                        self.assertTrue(m["name"] in pod.volumes or m["name"] in pod.claims,
                                        f"{c['name']} mounts {m['name']}, which is no volume")
                    for e in c.get("env", []):
                        ref = get(e, "valueFrom.configMapKeyRef") or get(e, "valueFrom.secretKeyRef")
                        if ref:
                            self.assertTrue(pod.config_map(ref["name"]) or ref["name"] in secrets, ref)
                for v in pod.volumes.values():
                    if "configMap" in v:
                        cm = pod.config_map(v["configMap"]["name"])
                        self.assertTrue(cm, f"no ConfigMap {v['configMap']['name']}")
                        for item in v["configMap"].get("items", []):
                            self.assertIn(item["key"], cm["data"])
                    if "secret" in v:
                        name = v["secret"]["secretName"]
                        self.assertIn(name, secrets, f"Secret {name} is neither here nor created in README.md")
                        for item in v["secret"].get("items", []):
                            self.assertIn(item["key"], secrets[name], f"Secret {name} key")

    def test_security_context(self):
        for objs in self.each():
            for w, pod in self.each_pod(objs):
                psec = pod.spec.get("securityContext", {})
                for c in containers(w):
                    sec = dict(psec, **c.get("securityContext", {}))
                    for field, want in (("runAsNonRoot", True), ("readOnlyRootFilesystem", True),
                                        ("allowPrivilegeEscalation", False)):
                        self.assertIs(sec.get(field), want, f"{c['name']}: {field}")
                    self.assertGreater(sec.get("runAsUser", 0), 0, f"{c['name']}: runAsUser")
                    self.assertIn("ALL", get(sec, "capabilities.drop", []), f"{c['name']}: drop ALL")
                    if c in server_containers(w):
                        self.assertEqual(sec["runAsUser"], SERVER_UID)
                        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                        self.assertTrue(tmp and "emptyDir" in pod.volumes[tmp[0]["name"]], "/tmp: no emptyDir")

    def test_pdb_selects_a_workload_and_allows_a_disruption(self):
        for objs in self.each():
            pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
            self.assertTrue(pdbs)
            for pdb in pdbs:
                spec = pdb["spec"]
                self.assertEqual(len({"minAvailable", "maxUnavailable"} & set(spec)), 1, "one of min/max")
                matched = [w for w in workloads(objs) if selects(spec["selector"]["matchLabels"],
                                                                 w["spec"]["template"]["metadata"]["labels"])]
                self.assertTrue(matched, "the PDB selects no workload")
                for w in matched:  # a PDB that allows none blocks every node drain
                    replicas = w["spec"]["replicas"]
                    self.assertTrue(spec.get("maxUnavailable", 0) >= 1
                                    or spec.get("minAvailable", replicas) < replicas, "allows no eviction")

    def test_server_flags_agree_with_the_manifests(self):
        for objs in self.each():
            for w, pod in self.each_pod(objs):
                for c in server_containers(w):
                    f = pod.server_flags(c)
                    grpc, metrics = listen_port(f["listen"]), listen_port(f["metrics_listen"])
                    self.assertTrue(f["listen"].startswith("0.0.0.0:"), "--listen serves only the pod itself")
                    self.assertEqual(port_of(c, grpc), grpc, "--listen port is no container port")
                    self.assertEqual(port_of(c, metrics), metrics, "--metrics_listen port is no container port")
                    for probe in ("readinessProbe", "livenessProbe"):
                        self.assertEqual(get(c, f"{probe}.grpc.port"), grpc, f"{probe}: not gRPC on --listen")
                    notes = w["spec"]["template"]["metadata"].get("annotations", {})
                    self.assertEqual(notes.get("prometheus.io/scrape"), "true")
                    self.assertEqual(int(notes.get("prometheus.io/port", 0)), metrics, "prometheus.io/port")
                    # Drain: preStop, then SIGTERM: NOT_SERVING for drain_grace, calls get drain_seconds,
                    # then the sessions are written; the kubelet must not SIGKILL before.
                    drain = int(f.get("drain_grace_seconds", 1)) + int(f.get("drain_seconds", 10))
                    grace = pod.spec.get("terminationGracePeriodSeconds", 30)
                    self.assertGreater(grace, prestop_sleep(c) + drain + FLUSH_MARGIN_S, "grace period")
                    live = c["livenessProbe"]
                    self.assertGreaterEqual(live.get("periodSeconds", 10) * live.get("failureThreshold", 3),
                                            drain + FLUSH_MARGIN_S, "liveness would kill a drain")
                    limits = c["resources"]["limits"]
                    need = int(f["memory_budget_mb"]) + int(f.get("input_buffer_mb", 256)) + MEMORY_HEADROOM_MIB
                    self.assertGreaterEqual(mib(limits["memory"]), need, "memory limit below the budgets")
                    threads = int(f.get("threads", 0))
                    self.assertTrue(1 <= threads <= cpus(limits["cpu"]), "--threads vs the CPU limit")
                    # Files the server reads lie in its volumes (keys of their ConfigMap or Secret).
                    for flag in ("auth_keys", "state_store_password_file", "tls_cert", "tls_key",
                                 "tls_client_ca"):
                        if f.get(flag):
                            pod.file(c, f[flag])
                    self.assert_store_reachable(objs, f)
                    gpu = "nvidia.com/gpu" in limits
                    self.assertEqual(gpu, f.get("device", "auto").startswith("cuda"), "--device vs GPU limit")
                    self.assertEqual(gpu, c["image"].endswith(":cuda"), "image vs GPU limit")

    def assert_store_reachable(self, objs, flags):
        m = re.fullmatch(r"redis://([^:/]+):(\d+)(/\d+)?", flags.get("state_store", ""))
        self.assertTrue(m, f"--state_store {flags.get('state_store')!r}")
        svc = service(objs, m.group(1))
        self.assertTrue(svc and any(p["port"] == int(m.group(2)) for p in svc["spec"]["ports"]),
                        f"no Service {m.group(1)} with port {m.group(2)}")

    def test_gpu_variant_requests_a_gpu(self):
        gpu = [c for w in workloads(self.variants["gpu"]) for c in server_containers(w)]
        self.assertTrue(gpu)
        for c in gpu:
            self.assertGreaterEqual(int(get(c, "resources.limits", {}).get("nvidia.com/gpu", 0)), 1)
            # Extended resources cannot be overcommitted: a request must equal the limit.
            self.assertEqual(get(c, "resources.requests", {}).get("nvidia.com/gpu"),
                             c["resources"]["limits"]["nvidia.com/gpu"])

    def test_flags_are_known_to_the_server(self):
        binary = os.environ.get("TRAMS_SERVER")
        if not binary:
            self.skipTest("TRAMS_SERVER is not set: the flags are not checked against trams-server --helpfull")
        out = subprocess.run([binary, "--helpfull"], capture_output=True, text=True, timeout=30)
        known = set(re.findall(r"^    --(\w+) \(", out.stdout + out.stderr, re.M))
        self.assertIn("listen", known, "could not read trams-server --helpfull")
        for objs in self.each():
            for w, pod in self.each_pod(objs):
                for c in server_containers(w):
                    self.assertFalse(set(pod.server_flags(c)) - known, "flags trams-server does not know")

    def gateway(self, objs):
        """(nginx.conf text, its Deployment, the container) of the gateway."""
        for w in workloads(objs):
            for c in containers(w):
                cmd = c.get("command", [])
                if cmd[:1] == ["nginx"] and "-c" in cmd:
                    _, _, text = Pod(w, objs).file(c, cmd[cmd.index("-c") + 1])
                    return text, w, c
        self.fail("no nginx Deployment with -c CONFIG")

    def test_gateway_hashes_sessions_over_every_replica(self):
        for objs in self.each():
            conf, _, nginx = self.gateway(objs)
            upstream = re.search(r"upstream\s+\w+\s*\{([^}]*)\}", conf)
            self.assertTrue(upstream, "no upstream block")
            self.assertRegex(upstream.group(1), r"hash \$http_x_session_id consistent;")
            servers = re.findall(r"^\s*server\s+([^:\s]+):(\d+)", upstream.group(1), re.M)
            self.assertRegex(conf, r"grpc_pass grpc://" + re.search(r"upstream\s+(\w+)", conf).group(1) + ";")
            for port in re.findall(r"^\s*listen\s+(?:[\d.]+:)?(\d+)", conf, re.M):
                self.assertIsNotNone(port_of(nginx, int(port)), f"nginx listens on {port}, no container port")
            server_sets = [w for w in objs if w["kind"] == "StatefulSet" and server_containers(w)]
            for sts in server_sets:
                labels = pod_label_sets(sts)
                reached = []
                for host, port in servers:
                    svc = service(objs, host)
                    self.assertTrue(svc, f"upstream {host} is no Service")
                    self.assertTrue(any(p["port"] == int(port) for p in svc["spec"]["ports"]), f"{host}:{port}")
                    self.assertIs(svc["spec"].get("publishNotReadyAddresses"), True, f"{host}: draining pods")
                    pods = [i for i, pl in enumerate(labels) if selects(svc["spec"]["selector"], pl)]
                    self.assertEqual(len(pods), 1, f"{host} selects {len(pods)} pods, not one")
                    reached += pods
                self.assertEqual(sorted(reached), list(range(sts["spec"]["replicas"])),
                                 "the upstream lists other pods than the StatefulSet's replicas")

    def test_nginx_accepts_the_gateway_config(self):
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if not nginx:
            self.skipTest("nginx is not installed: nginx -t not run")
        conf, _, _ = self.gateway(self.variants["host"])
        with tempfile.TemporaryDirectory() as scratch:
            # nginx -t resolves the upstream names (cluster Services, unknown here: 127.0.0.1 instead) and
            # creates its temporary directories (the pod's /tmp emptyDir: a scratch one instead).
            conf = re.sub(r"(^\s*server\s+)[^:\s]+(:\d+)", r"\g<1>127.0.0.1\2", conf, flags=re.M)
            conf = conf.replace("/tmp/", scratch + "/")
            Path(scratch, "nginx.conf").write_text(conf)
            out = subprocess.run([nginx, "-t", "-p", scratch, "-e", "stderr", "-c", f"{scratch}/nginx.conf"],
                                 capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)

    def test_scrape_job_keeps_the_annotated_pods(self):
        config = yaml.safe_load(SCRAPE_FILE.read_text())
        jobs = config["scrape_configs"]
        self.assertTrue(jobs)
        for job in jobs:
            self.assertEqual([sd["role"] for sd in job["kubernetes_sd_configs"]], ["pod"])
            rules = job["relabel_configs"]
            self.assertIn({"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                           "action": "keep", "regex": "true"}, rules)
            sources = {s for r in rules for s in r.get("source_labels", [])}
            self.assertIn("__meta_kubernetes_pod_annotation_prometheus_io_port", sources)
            self.assertIn("__meta_kubernetes_pod_annotation_prometheus_io_path", sources)

    def test_promtool_accepts_the_scrape_job(self):
        promtool = shutil.which("promtool")
        if not promtool:
            self.skipTest("promtool is not installed: promtool check config not run")
        out = subprocess.run([promtool, "check", "config", str(SCRAPE_FILE)], capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0 and "kubernetes_sd_configs not found" in out.stdout + out.stderr:
            # Debian's Prometheus is built without Kubernetes discovery: check the rest of the job (its
            # relabelling) with static targets in place of the discovery.
            print("NOTE: this promtool has no kubernetes_sd_configs; checking the job with static targets",
                  file=sys.stderr)
            config = yaml.safe_load(SCRAPE_FILE.read_text())
            for job in config["scrape_configs"]:
                job.pop("kubernetes_sd_configs")
                job["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch, "scrape.yml")
                path.write_text(yaml.safe_dump(config))
                out = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True,
                                     timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
