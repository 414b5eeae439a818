#!/usr/bin/env python3
"""Structure and policy checks for the deployment material, run by .ci/check-deploy.

Schema validation is done by kubernetes-validate, lint by yamllint and hadolint; this file
checks what no schema can: that the pieces agree with each other and with docs/operations.md#probes
(probes, drain timing, hardening, the compose topology, the dashboard's metric names).

    check_deploy.py k8s FLAVOR RENDERED   policy checks on a rendered bundle (FLAVOR: dev, production,
                                          helm-default, helm-production, helm-dev)
    check_deploy.py secret-example        k8s/secret.example.yaml holds placeholders only
    check_deploy.py split IN CORE CRD     split a bundle into core kinds and custom resources
    check_deploy.py crds FILE...          custom resources against .ci/schemas/crds.json
    check_deploy.py rules                 the PrometheusRule copies, alert tests and runbook
    check_deploy.py compose               deploy/compose.yaml, nginx.conf, otel, prometheus
    check_deploy.py grafana               deploy/grafana/ dashboard and provisioning
    check_deploy.py docker                Dockerfile / .dockerignore facts the k8s side relies on

Needs PyYAML (installed in the check-deploy venv). Prints one line per failed check and
a closing "N passed, N failed" line; exits 1 if anything failed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = ROOT / "k8s"

# The metric names the server exposes (docs/operations.md, "Metrics"); the dashboard may use only these.
METRICS = {
    "chat_ws_connections": "gauge",
    "chat_messages_accepted_total": "counter",
    "chat_messages_delivered_total": "counter",
    "chat_fanout_latency_seconds": "histogram",
    "chat_commit_batch_size": "histogram",
    "chat_commit_duration_seconds": "histogram",
    "http_requests_total": "counter",
    "http_request_duration_seconds": "histogram",
    "chat_slow_consumer_closes_total": "counter",
    "chat_redis_reconnects_total": "counter",
    "chat_bus_gap_fills_total": "counter",
    "chat_db_pool_connections": "gauge",
    "chat_ws_closes_total": "counter",
    "chat_build_info": "gauge",
    "chat_ready": "gauge",
    "chat_bus_live": "gauge",
    "chat_schema_current": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
}


class Checks:
    def __init__(self, area: str) -> None:
        self.area = area
        self.passed = 0
        self.failed: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed.append(what)
            print(f"FAIL [{self.area}] {what}")
        return ok

    def finish(self) -> int:
        print(f"{self.area}: {self.passed} passed, {len(self.failed)} failed")
        return 1 if self.failed else 0


def load_all(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def dig(obj, *keys, default=None):
    for k in keys:
        if isinstance(obj, dict) and k in obj:
            obj = obj[k]
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return default
    return obj


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- k8s


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        return dig(doc, "spec", "template", "spec")
    if doc.get("kind") == "CronJob":
        return dig(doc, "spec", "jobTemplate", "spec", "template", "spec")
    return None


def server_deployment(by_kind: dict) -> dict | None:
    """The Deployment whose pod runs the `chat-server` container."""
    for d in by_kind.get("Deployment", {}).values():
        if any(c["name"] == "chat-server" for c in dig(d, "spec", "template", "spec", "containers", default=[])):
            return d
    return None


def rules_groups() -> list:
    return yaml.safe_load((DEPLOY / "prometheus" / "chat-rules.yaml").read_text())["groups"]


# What each rendered bundle must be (.ci/check-deploy renders them):
#   dev: kustomize overlays/dev; production: overlays/production; helm-*: `helm template`
#   with the chart's default, production and dev values files.
FLAVORS = {
    "dev": dict(namespace=True, hpa=False, exposure="Ingress", monitoring=False, secret=False, digest=False),
    "production": dict(namespace=False, hpa=True, exposure="HTTPRoute", monitoring=True, secret=False, digest=True),
    "helm-default": dict(namespace=False, hpa=True, exposure=None, monitoring=True, secret=False, digest=False),
    "helm-production": dict(namespace=False, hpa=True, exposure="HTTPRoute", monitoring=True, secret=False, digest=True),
    "helm-dev": dict(namespace=False, hpa=False, exposure="Ingress", monitoring=False, secret=True, digest=False),
}


def check_k8s(flavor: str, rendered: Path) -> int:
    want = FLAVORS[flavor]
    helm = flavor.startswith("helm")
    c = Checks(f"k8s {flavor}")
    docs = load_all(rendered)
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    name = lambda d: f"{d['kind']}/{d['metadata']['name']}"  # noqa: E731

    # Layout: the namespace only in the dev overlay, everything else in `chat` (kustomize; Helm
    # installs into the release namespace), common labels, no Secret unless the chart makes one.
    if want["namespace"]:
        c.check(list(by_kind.get("Namespace", {})) == ["chat"], "exactly one Namespace, `chat`")
    else:
        c.check("Namespace" not in by_kind, "no Namespace (the platform or `helm -n` provides it)")
    for d in docs:
        if d["kind"] != "Namespace" and not helm:
            c.check(d["metadata"].get("namespace") == "chat", f"{name(d)} is in namespace chat")
        c.check(dig(d, "metadata", "labels", "app.kubernetes.io/part-of") == "chat", f"{name(d)} has part-of=chat")
    if want["secret"]:
        c.check(len(by_kind.get("Secret", {})) == 1, "the chart creates one Secret (no existingSecret)")
    else:
        c.check("Secret" not in by_kind, "no Secret in the bundle (existingSecret / secret.example.yaml stays out)")
    for kind in ("Deployment", "Service", "Job", "ConfigMap", "NetworkPolicy"):
        c.check(bool(by_kind.get(kind)), f"the bundle has a {kind}")
    if flavor != "helm-dev":
        c.check(bool(by_kind.get("PodDisruptionBudget")), "the bundle has a PodDisruptionBudget")
    if want["exposure"]:
        c.check(bool(by_kind.get(want["exposure"])), f"exposed through a {want['exposure']}")

    # Every pod: Pod Security "restricted" essentials, resources, pinned images.
    for d in docs:
        spec = pod_spec(d)
        if spec is None:
            continue
        psc = spec.get("securityContext", {})
        c.check(dig(psc, "seccompProfile", "type") == "RuntimeDefault", f"{name(d)}: pod seccomp RuntimeDefault")
        c.check(spec.get("automountServiceAccountToken") is False, f"{name(d)}: no service account token")
        for ctr in spec.get("containers", []) + spec.get("initContainers", []):
            where = f"{name(d)}/{ctr['name']}"
            sc = ctr.get("securityContext", {})
            c.check(psc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
            c.check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
            c.check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
            c.check(dig(sc, "capabilities", "drop") == ["ALL"], f"{where}: drops ALL capabilities")
            c.check(sc.get("privileged") in (None, False), f"{where}: not privileged")
            c.check({"cpu", "memory"} <= set(dig(ctr, "resources", "requests", default={})), f"{where}: cpu and memory requests")
            c.check("memory" in dig(ctr, "resources", "limits", default={}), f"{where}: a memory limit")
            image = ctr.get("image", "")
            pinned = "@sha256:" in image or (":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"))
            c.check(pinned, f"{where}: image {image!r} has a digest or an explicit, non-latest tag")
            if want["digest"] and ctr["name"] in ("chat-server", "migrate"):
                c.check("@sha256:" in image, f"{where}: image pinned by digest ({image})")

    dep = server_deployment(by_kind)
    if not c.check(dep is not None, "the chat-server Deployment exists"):
        return c.finish()
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    ctr = next(x for x in pod["containers"] if x["name"] == "chat-server")
    refs = {(k, dig(e, k, "name")) for e in ctr.get("envFrom", []) for k in e}
    cm_names = [n for k, n in refs if k == "configMapRef"]
    cm = by_kind.get("ConfigMap", {}).get(cm_names[0] if cm_names else "", {})
    cm_data = cm.get("data", {})
    c.check(bool(cm_data), f"the Deployment's ConfigMap {cm_names} exists")
    for secret_key in ("JWT_SECRET", "DATABASE_URL", "REDIS_URL"):
        c.check(secret_key not in cm_data, f"{secret_key} is not in the ConfigMap (it belongs in the Secret)")
    c.check(any(k == "secretRef" for k, _ in refs), "chat-server: envFrom a Secret")
    grace = int(cm_data.get("SHUTDOWN_GRACE_SECS", "10"))
    # A config change rolls the pods: a generated name (kustomize) or a checksum annotation (Helm).
    if helm:
        ann = dig(spec, "template", "metadata", "annotations", default={})
        c.check(re.fullmatch(r"[0-9a-f]{64}", ann.get("checksum/config", "")) is not None, "pod template has checksum/config")
    else:
        c.check(re.fullmatch(r"chat-server-config-[a-z0-9]{10}", cm["metadata"]["name"]) is not None,
                "ConfigMap name carries the content hash (configMapGenerator)")

    hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", {}).values()
            if h["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]]
    c.check(bool(hpas) == want["hpa"], f"HPA present: {want['hpa']}")
    if hpas:
        c.check("replicas" not in spec, "no `replicas` in the Deployment: the HPA owns the count")
    else:
        c.check(isinstance(spec.get("replicas"), int) and spec["replicas"] >= 1, "without an HPA the Deployment sets replicas")
    c.check(labels_match(spec["selector"]["matchLabels"], pod_labels), "chat-server: selector matches pod labels")
    c.check(dig(spec, "strategy", "rollingUpdate", "maxUnavailable") == 0, "chat-server: maxUnavailable 0")
    c.check(spec.get("minReadySeconds", 0) >= 5, "chat-server: minReadySeconds >= 5 (new pods warm before the next old one stops)")
    ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
    c.check(ports.get("http") == 8080 and ports.get("internal") == 9090, "chat-server: ports http=8080, internal=9090")
    c.check(cm_data.get("INTERNAL_ADDR") == "0.0.0.0:9090", "INTERNAL_ADDR=0.0.0.0:9090: probes and metrics off the public port")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        c.check(dig(ctr, probe, "httpGet", "path") == path, f"chat-server: {probe} on {path}")
        c.check(dig(ctr, probe, "httpGet", "port") == "internal", f"chat-server: {probe} on the internal port")
    c.check(ctr.get("args") == ["serve"], "chat-server: args [serve]")
    env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
    c.check(env.get("AUTO_MIGRATE") == "false", "chat-server: AUTO_MIGRATE=false")
    res = ctr.get("resources", {})
    c.check(dig(res, "requests", "memory") == dig(res, "limits", "memory"), "chat-server: memory request = limit")
    cpu_limit = dig(res, "limits", "cpu")
    c.check(cpu_limit is None, "chat-server: no CPU limit (TOKIO_WORKER_THREADS sizes the runtime)")
    c.check(cm_data.get("TOKIO_WORKER_THREADS", "").isdigit(), "TOKIO_WORKER_THREADS is set")
    cmd = dig(ctr, "lifecycle", "preStop", "exec", "command", default=[])
    sleep = int(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" and cmd[1].isdigit() else None
    if c.check(sleep is not None and sleep > 0, "chat-server: preStop is `sleep N`"):
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        c.check(
            tgps > sleep + grace,
            f"chat-server: terminationGracePeriodSeconds {tgps} > preStop {sleep} + SHUTDOWN_GRACE_SECS {grace}",
        )
    c.check(dig(pod, "securityContext", "runAsUser") == 10001, "chat-server: runs as uid 10001 (the image's user)")

    # Everything that points at the server pods.
    svc = None
    public: dict = {}
    for s in by_kind.get("Service", {}).values():
        if labels_match(s["spec"].get("selector", {}), pod_labels):
            svc = s
    if c.check(svc is not None, "a Service selects the chat-server pods"):
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort")
            c.check(tp in ports or tp in ports.values(), f"Service targetPort {tp} exists")
        public = {p["name"]: p["port"] for p in svc["spec"]["ports"] if p.get("targetPort") in ("http", 8080)}
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        c.check(labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB selects the chat-server pods")
    pool = int(cm_data.get("DB_MAX_CONNECTIONS", "20"))
    for hpa in hpas:
        c.check(hpa["apiVersion"] == "autoscaling/v2", "HPA is autoscaling/v2")
        c.check(hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment", "HPA targets the Deployment")
        c.check(hpa["spec"].get("minReplicas", 1) >= 3, "HPA minReplicas >= 3")
        metrics = hpa["spec"].get("metrics", [])
        for res_name in ("cpu", "memory"):
            c.check(any(dig(m, "resource", "name") == res_name for m in metrics), f"HPA scales on {res_name}")
        c.check(
            any(m.get("type") == "Pods" and dig(m, "pods", "metric", "name") == "chat_ws_connections" for m in metrics),
            "HPA scales on chat_ws_connections per pod",
        )
        c.check(
            hpa["spec"]["maxReplicas"] * (pool + 1) + 1 <= 100,
            f"HPA maxReplicas x (DB_MAX_CONNECTIONS + the commit connection) ({hpa['spec']['maxReplicas']} x {pool + 1}) fits 100 PostgreSQL connections",
        )

    # The migration runs the same image; with Helm, as a pre-install/pre-upgrade hook.
    jobs = [j for j in by_kind.get("Job", {}).values() if dig(j, "spec", "template", "spec", "containers", 0, "args") == ["migrate"]]
    if c.check(len(jobs) == 1, "one migration Job (`chat-server migrate`)"):
        job = jobs[0]
        jctr = job["spec"]["template"]["spec"]["containers"][0]
        c.check(jctr.get("image") == ctr.get("image"), "migration Job uses the Deployment's image")
        c.check(job["spec"]["template"]["spec"].get("restartPolicy") in ("Never", "OnFailure"), "migration Job restartPolicy")
        if helm:
            hook = dig(job, "metadata", "annotations", "helm.sh/hook", default="")
            c.check(set(hook.split(",")) == {"pre-install", "pre-upgrade"}, "migration Job is a pre-install,pre-upgrade hook")
            for sec in by_kind.get("Secret", {}).values():
                sw = int(dig(sec, "metadata", "annotations", "helm.sh/hook-weight", default="0"))
                jw = int(dig(job, "metadata", "annotations", "helm.sh/hook-weight", default="0"))
                c.check(sw < jw, "the chart's Secret is a hook that exists before the migration hook")

    # Exposure: only the public port, never the internal one; WebSocket-friendly.
    for ing in by_kind.get("Ingress", {}).values():
        ann = ing["metadata"].get("annotations", {})
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            val = ann.get(f"nginx.ingress.kubernetes.io/{key}", "0")
            c.check(val.isdigit() and int(val) >= 3600, f"Ingress {key} >= 3600")
        c.check(ann.get("nginx.ingress.kubernetes.io/proxy-http-version") == "1.1", "Ingress proxy-http-version 1.1")
        for rule in ing["spec"].get("rules", []):
            for path in dig(rule, "http", "paths", default=[]):
                c.check(dig(path, "backend", "service", "name") == dig(svc, "metadata", "name"), "Ingress backend is the Service")
                port = dig(path, "backend", "service", "port", default={})
                c.check(port.get("name") in public or port.get("number") in public.values(), f"Ingress routes the public port only ({port})")
    for route in by_kind.get("HTTPRoute", {}).values():
        for rule in route["spec"].get("rules", []):
            for ref in rule.get("backendRefs", []):
                c.check(ref["name"] == dig(svc, "metadata", "name"), "HTTPRoute backend is the Service")
                c.check(ref.get("port") in public.values(), f"HTTPRoute routes the public port only ({ref.get('port')})")
            c.check(dig(rule, "timeouts", "request") == "0s", "HTTPRoute: no request timeout (WebSockets)")

    # NetworkPolicy: default deny, then the server's own allowances.
    nps = list(by_kind.get("NetworkPolicy", {}).values())
    c.check(
        any(np["spec"].get("podSelector") == {} and set(np["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not np["spec"].get("ingress") and not np["spec"].get("egress") for np in nps),
        "a default-deny NetworkPolicy (every pod, ingress and egress)",
    )
    server_nps = [np for np in nps if labels_match(dig(np, "spec", "podSelector", "matchLabels", default={}), pod_labels)]
    if c.check(len(server_nps) == 1, "one NetworkPolicy selects the chat-server pods"):
        np = server_nps[0]["spec"]
        in_ports = [p.get("port") for r in np.get("ingress", []) for p in r.get("ports", [])]
        c.check(sorted(in_ports) == ["http", "internal"], f"ingress only to http and internal ({in_ports})")
        out_ports = {p.get("port") for r in np.get("egress", []) for p in r.get("ports", [])}
        for port, what in ((53, "DNS"), (5432, "PostgreSQL"), (6379 if flavor.endswith("dev") else 6380, "Redis"), (4318, "OTLP")):
            c.check(port in out_ports, f"egress to {what} ({port})")
    for store in ("redis", "postgres"):
        if store in by_kind.get("Service", {}):
            c.check(store in {np["metadata"]["name"] for np in nps}, f"dev {store} has a NetworkPolicy (chat-server only)")

    # Monitoring: scrape the internal port; the rules are the tested ones.
    monitors = list(by_kind.get("PodMonitor", {}).values()) + list(by_kind.get("ServiceMonitor", {}).values())
    rules = list(by_kind.get("PrometheusRule", {}).values())
    c.check(bool(monitors) == want["monitoring"] or flavor == "helm-dev", f"PodMonitor/ServiceMonitor present: {want['monitoring']}")
    c.check(bool(rules) == want["monitoring"], f"PrometheusRule present: {want['monitoring']}")
    for m in monitors:
        eps = dig(m, "spec", "podMetricsEndpoints", default=[]) + dig(m, "spec", "endpoints", default=[])
        c.check(bool(eps) and all(e.get("port") == "internal" and e.get("path") == "/metrics" for e in eps),
                f"{name(m)} scrapes /metrics on the internal port")
    for r in rules:
        c.check(r["spec"]["groups"] == rules_groups(), f"{name(r)} holds exactly deploy/prometheus/chat-rules.yaml")

    # Dev-only data stores are marked as such.
    for kind in ("StatefulSet", "Deployment", "Service"):
        for d in by_kind.get(kind, {}).values():
            if d["metadata"]["name"] in ("postgres", "redis"):
                c.check(
                    dig(d, "metadata", "labels", "chat.example.com/dev-only") == "true", f"{name(d)} is labelled dev-only"
                )
    return c.finish()


def check_secret_example() -> int:
    c = Checks("secret.example")
    for sec in load_all(K8S / "secret.example.yaml"):
        data = sec.get("stringData", {})
        c.check("data" not in sec, f"secret.example {sec['metadata']['name']}: stringData only")
        for key, val in data.items():
            if key in ("JWT_SECRET", "POSTGRES_PASSWORD"):
                c.check("REPLACE_ME" in val, f"secret.example {key} is a placeholder")
            m = re.match(r"^\w+s?://[^:/@]*:([^@]*)@", val)
            if m:
                c.check("REPLACE_ME" in m.group(1), f"secret.example {key}: URL password is a placeholder")
        if sec["metadata"]["name"] == "chat-server-secrets":
            c.check({"JWT_SECRET", "DATABASE_URL", "REDIS_URL"} <= set(data), "secret.example has JWT_SECRET, DATABASE_URL, REDIS_URL")
    return c.finish()


# ------------------------------------------------------------------------- CRDs

CORE_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}


def split(rendered: Path, core_out: Path, crd_out: Path) -> int:
    """Core kinds (for kubernetes-validate) and CRD kinds (for `crds`) into two files."""
    core, crd = [], []
    for d in load_all(rendered):
        (core if d.get("apiVersion") in CORE_GROUPS else crd).append(d)
    core_out.write_text(yaml.safe_dump_all(core, sort_keys=False))
    crd_out.write_text(yaml.safe_dump_all(crd, sort_keys=False))
    print(f"{rendered.name}: {len(core)} core, {len(crd)} custom resources")
    return 0


def check_crds(paths: list[Path]) -> int:
    """Custom resources against .ci/schemas/crds.json, strictly (unknown fields fail)."""
    import jsonschema

    c = Checks("crds")
    schemas = json.loads((ROOT / ".ci" / "schemas" / "crds.json").read_text())
    for path in paths:
        for d in load_all(path):
            key = f"{d.get('apiVersion')}/{d.get('kind')}"
            if d.get("apiVersion") in CORE_GROUPS:
                continue
            where = f"{path.name}: {key} {dig(d, 'metadata', 'name')}"
            if not c.check(key in schemas, f"{where}: a schema for {key} is kept in .ci/schemas/crds.json"):
                continue
            errors = sorted(jsonschema.Draft7Validator(schemas[key]).iter_errors(d), key=lambda e: list(e.path))
            for e in errors:
                print(f"  {where}: /{'/'.join(map(str, e.path))}: {e.message}")
            c.check(not errors, f"{where} is valid")
    return c.finish()


def check_rules() -> int:
    """The PrometheusRule copies are the source, and every alert has unit tests both ways."""
    c = Checks("rules")
    src = DEPLOY / "prometheus" / "chat-rules.yaml"
    chart = DEPLOY / "helm" / "chat-server" / "files" / "chat-rules.yaml"
    c.check(chart.read_text() == src.read_text(), "the chart's files/chat-rules.yaml is identical to deploy/prometheus/chat-rules.yaml")
    comp = load_all(K8S / "components" / "monitoring" / "prometheusrule.yaml")[0]
    c.check(comp["spec"]["groups"] == rules_groups(), "k8s/components/monitoring/prometheusrule.yaml holds the same groups")
    alerts = [r["alert"] for g in rules_groups() for r in g["rules"] if "alert" in r]
    c.check(len(alerts) == len(set(alerts)), "alert names are unique")
    tests = yaml.safe_load((DEPLOY / "prometheus" / "chat-rules.test.yaml").read_text())
    cases = [t for test in tests["tests"] for t in test.get("alert_rule_test", [])]
    runbook = (DEPLOY / "RUNBOOK.md").read_text()
    for rule in (r for g in rules_groups() for r in g["rules"] if "alert" in r):
        a = rule["alert"]
        c.check(any(t["alertname"] == a and t.get("exp_alerts") for t in cases), f"{a}: a test case where it fires")
        c.check(any(t["alertname"] == a and not t.get("exp_alerts") for t in cases), f"{a}: a test case where it does not fire")
        c.check(rule.get("labels", {}).get("severity") in ("page", "ticket"), f"{a}: severity page or ticket")
        anchor = rule.get("annotations", {}).get("runbook_url", "").split("#")[-1]
        c.check(anchor == a.lower() and f"### {a}\n" in runbook, f"{a}: runbook_url points at its section of deploy/RUNBOOK.md")
    return c.finish()


# ----------------------------------------------------------------------- compose


def check_compose() -> int:
    c = Checks("compose")
    path = DEPLOY / "compose.yaml"
    doc = yaml.safe_load(path.read_text())
    allowed_top = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
    for key in doc:
        c.check(key in allowed_top or key.startswith("x-"), f"compose: top-level key {key!r} is known")
    services: dict = doc.get("services", {})
    volumes = set((doc.get("volumes") or {}).keys())
    c.check(bool(services), "compose: has services")

    known_service_keys = {
        "build", "image", "command", "entrypoint", "environment", "env_file", "ports", "expose", "volumes",
        "depends_on", "healthcheck", "restart", "hostname", "user", "read_only", "tmpfs", "cap_drop", "cap_add",
        "security_opt", "stop_grace_period", "stop_signal", "deploy", "networks", "labels", "logging", "ulimits",
        "working_dir", "profiles", "pull_policy", "init", "extra_hosts", "container_name", "sysctls", "shm_size",
    }
    for sname, svc in services.items():
        for key in svc:
            c.check(key in known_service_keys, f"compose: {sname}.{key} is a known service key")
        c.check("image" in svc or "build" in svc, f"compose: {sname} has image or build")
        deps = svc.get("depends_on", {})
        dep_names = deps if isinstance(deps, list) else list(deps)
        for dep in dep_names:
            c.check(dep in services and dep != sname, f"compose: {sname} depends on existing service {dep}")
            if isinstance(deps, dict):
                cond = deps[dep].get("condition", "service_started")
                c.check(
                    cond in ("service_started", "service_healthy", "service_completed_successfully"),
                    f"compose: {sname} -> {dep} condition {cond}",
                )
                if cond == "service_healthy":
                    # Either a healthcheck here or the image's own HEALTHCHECK (our Dockerfile).
                    c.check(
                        "healthcheck" in services[dep] or "build" in services[dep],
                        f"compose: {dep} has a healthcheck ({sname} waits for it)",
                    )
        for port in svc.get("ports", []):
            c.check(
                isinstance(port, str) and re.fullmatch(r"(127\.0\.0\.1:)?\d+:\d+(/(tcp|udp))?", port) is not None,
                f"compose: {sname} port {port!r} is a quoted, loopback-bound mapping",
            )
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")):
                c.check((DEPLOY / src).exists(), f"compose: {sname} mounts existing {src}")
            else:
                c.check(src in volumes, f"compose: {sname} volume {src} is declared")
        if "build" in svc:
            ctx = (DEPLOY / svc["build"].get("context", ".")).resolve()
            c.check((ctx / svc["build"].get("dockerfile", "Dockerfile")).exists(), f"compose: {sname} Dockerfile exists")

    replicas = [s for s in services if re.fullmatch(r"chat-\d+", s)]
    c.check(len(replicas) == 3, f"compose: 3 chat replicas ({replicas})")
    envs = [services[r].get("environment", {}) for r in replicas]
    for r, env in zip(replicas, envs):
        c.check(str(env.get("DATABASE_URL", "")).startswith("postgres://"), f"compose: {r} uses PostgreSQL")
        c.check(str(env.get("REDIS_URL", "")).startswith("redis://"), f"compose: {r} uses Redis (cluster mode)")
        c.check(env.get("AUTO_MIGRATE") == "false", f"compose: {r} AUTO_MIGRATE=false")
        c.check(f"service.instance.id={r}" in env.get("OTEL_RESOURCE_ATTRIBUTES", ""), f"compose: {r} has its own instance id")
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        host = re.sub(r"^\w+://([^:/]+).*$", r"\1", endpoint)
        c.check(host in services, f"compose: {r} exports traces to a compose service ({endpoint})")
        grace = int(env.get("SHUTDOWN_GRACE_SECS", "10"))
        sgp = str(services[r].get("stop_grace_period", "10s"))
        c.check(sgp.endswith("s") and int(sgp[:-1]) > grace, f"compose: {r} stop_grace_period {sgp} > {grace}s")
        dep = services[r].get("depends_on", {})
        c.check(
            isinstance(dep, dict) and dig(dep, "migrate", "condition") == "service_completed_successfully",
            f"compose: {r} starts after the migrate service",
        )
    c.check(len({e.get("JWT_SECRET") for e in envs}) == 1, "compose: replicas share one JWT_SECRET")
    c.check(dig(services, "migrate", "command") == ["migrate"], "compose: migrate service runs `migrate`")
    for needed in ("nginx", "postgres", "redis", "otel-collector", "jaeger"):
        c.check(needed in services, f"compose: has {needed}")

    # nginx.conf: round robin over exactly the compose replicas, WebSocket upgrade, XFF.
    conf = (DEPLOY / "nginx.conf").read_text()
    code = re.sub(r"#[^\n]*", "", conf)
    c.check(code.count("{") == code.count("}"), "nginx.conf: braces balance")
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", code, re.S)
    if c.check(upstream is not None, "nginx.conf: has an upstream block"):
        servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream.group(2), re.M)
        c.check(sorted(h for h, _ in servers) == sorted(replicas), f"nginx.conf: upstream servers = compose replicas {servers}")
        c.check(all(p == "8080" for _, p in servers), "nginx.conf: upstream port 8080")
        c.check(not re.search(r"\b(ip_hash|hash|sticky|least_conn)\b", upstream.group(2)), "nginx.conf: round robin")
        c.check(f"proxy_pass http://{upstream.group(1)}" in code, "nginx.conf: proxy_pass to the upstream")
    c.check(re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade", code) is not None, "nginx.conf: map $http_upgrade")
    c.check(re.search(r"proxy_http_version\s+1\.1;", code) is not None, "nginx.conf: proxy_http_version 1.1")
    c.check(re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", code) is not None, "nginx.conf: Upgrade header")
    c.check(
        re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", code) is not None, "nginx.conf: Connection header"
    )
    c.check(
        re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for;", code) is not None,
        "nginx.conf: X-Forwarded-For",
    )
    m = re.search(r"proxy_read_timeout\s+(\d+)s?;", code)
    c.check(m is not None and int(m.group(1)) >= 3600, "nginx.conf: proxy_read_timeout >= 3600s")
    listen = re.search(r"listen\s+(\d+);", code)
    nginx_ports = [p.split(":")[-1] for p in services.get("nginx", {}).get("ports", [])]
    c.check(listen is not None and listen.group(1) in nginx_ports, "nginx.conf: listen port is the published one")

    # OpenTelemetry collector: pipelines only use defined components; exporters reach compose services.
    otel = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    for pname, pipe in dig(otel, "service", "pipelines", default={}).items():
        for kind in ("receivers", "processors", "exporters"):
            for comp in pipe.get(kind, []):
                c.check(comp in (otel.get(kind) or {}), f"otel: pipeline {pname} {kind[:-1]} {comp} is defined")
    for ext in dig(otel, "service", "extensions", default=[]):
        c.check(ext in (otel.get("extensions") or {}), f"otel: extension {ext} is defined")
    c.check("traces" in dig(otel, "service", "pipelines", default={}), "otel: has a traces pipeline")
    for ename, exp in (otel.get("exporters") or {}).items():
        ep = (exp or {}).get("endpoint", "")
        host = re.sub(r"^(\w+://)?([^:/]+).*$", r"\2", ep)
        if ep and host not in ("0.0.0.0", "localhost", "127.0.0.1"):
            c.check(host in services, f"otel: exporter {ename} endpoint host {host} is a compose service")
    c.check(
        "4318" in str(dig(otel, "receivers", "otlp", "protocols", "http", "endpoint")), "otel: OTLP/HTTP receiver on 4318"
    )

    # Prometheus scrapes the replicas by their compose names.
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    hosts = [
        t.split(":")[0]
        for job in prom.get("scrape_configs", [])
        for sc in job.get("static_configs", [])
        for t in sc.get("targets", [])
    ]
    for h in hosts:
        c.check(h in services, f"prometheus: target host {h} is a compose service")
    c.check(set(replicas) <= set(hosts), "prometheus: scrapes every chat replica")
    c.check(prom.get("rule_files") == ["/etc/prometheus/rules/chat-rules.yaml"], "prometheus: loads the chat rules")
    prom_mounts = dig(services, "prometheus", "volumes", default=[])
    c.check("./prometheus/chat-rules.yaml:/etc/prometheus/rules/chat-rules.yaml:ro" in prom_mounts,
            "compose: prometheus mounts deploy/prometheus/chat-rules.yaml where prometheus.yml loads it")
    return c.finish()


# ----------------------------------------------------------------------- grafana

PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "count", "avg", "max", "min",
    "clamp_min", "clamp_max", "le", "instance", "endpoint", "transport", "route", "status", "method", "state",
    "offset", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "topk", "bottomk", "abs",
    "job", "up", "label_values",
}


def check_grafana() -> int:
    c = Checks("grafana")
    dash = json.loads((DEPLOY / "grafana" / "chat-dashboard.json").read_text())
    c.check(bool(dash.get("uid")) and bool(dash.get("title")), "dashboard has uid and title")
    c.check(isinstance(dash.get("schemaVersion"), int), "dashboard has a schemaVersion")
    panels = dash.get("panels", [])
    ids = [p.get("id") for p in panels]
    c.check(len(ids) == len(set(ids)) and None not in ids, "panel ids are unique")
    used: set[str] = set()
    exprs: list[str] = []
    for p in panels:
        gp = p.get("gridPos", {})
        c.check({"h", "w", "x", "y"} <= set(gp) and gp["x"] + gp["w"] <= 24, f"panel {p.get('title')!r} has a valid gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets", [])
        c.check(bool(targets), f"panel {p.get('title')!r} has queries")
        for t in targets:
            expr = t.get("expr", "")
            exprs.append(expr)
            c.check(expr.count("(") == expr.count(")"), f"panel {p.get('title')!r}: balanced parentheses")
            c.check(expr.count("{") == expr.count("}"), f"panel {p.get('title')!r}: balanced braces")
            for name in re.findall(r"\b((?:chat|http|process)_[a-z_]+)\b", expr):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                kind = METRICS.get(name) or METRICS.get(base)
                c.check(kind is not None, f"panel {p.get('title')!r}: metric {name} is one the server exposes")
                if name.endswith("_bucket"):
                    c.check(METRICS.get(base) == "histogram", f"{name} belongs to a histogram")
                used.add(base if base in METRICS else name)
    for metric in METRICS:
        c.check(metric in used, f"dashboard uses {metric}")
    joined = "\n".join(exprs)
    c.check("histogram_quantile(0.5" in joined and "histogram_quantile(0.99" in joined, "fan-out p50 and p99 via histogram_quantile")
    c.check(re.search(r'status=~"5\.\."', joined) is not None, "dashboard has a 5xx rate")
    c.check(re.search(r"sum by \(le, route\)", joined) is not None, "dashboard has HTTP latency by route")
    names = [v.get("name") for v in dig(dash, "templating", "list", default=[])]
    for var in ("namespace", "job", "pod"):
        c.check(var in names, f"dashboard has a `{var}` variable")
    for expr in exprs:
        if re.search(r"\b(chat|http|process)_", expr):
            c.check('namespace=~"$namespace"' in expr and 'job=~"$job"' in expr and 'pod=~"$pod"' in expr,
                    f"query filters on $namespace, $job and $pod: {expr[:60]}")
        if "http_requests_total" in expr:
            c.check('route!~"/healthz|/readyz|/metrics"' in expr, f"probes left out of request and error ratios: {expr[:60]}")

    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uids = {d.get("uid"): d for d in ds.get("datasources", [])}
    current = dig(dash, "templating", "list", 0, "current", "value")
    c.check(current in uids and uids[current]["type"] == "prometheus", "dashboard's default datasource is provisioned")
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "chat.yaml").read_text())
    path = dig(prov, "providers", 0, "options", "path")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = dig(compose, "services", "grafana", "volumes", default=[])
    c.check(any(v.split(":")[1].startswith(path) for v in mounts), f"compose mounts the dashboard under {path}")
    return c.finish()


# ------------------------------------------------------------------------ docker


def check_docker() -> int:
    c = Checks("docker")
    text = (ROOT / "Dockerfile").read_text()
    # Join continuation lines so multi-line RUN instructions read as one.
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    c.check(len(froms) >= 3, f"multi-stage build ({len(froms)} stages)")
    c.check(any("cargo chef cook" in ln for ln in lines), "dependency layer via cargo chef cook")
    c.check(any(re.search(r"cargo build --release.*chat-server", ln) for ln in lines), "release build of chat-server")
    c.check('ENTRYPOINT ["chat-server"]' in lines, 'ENTRYPOINT ["chat-server"]')
    c.check('CMD ["serve"]' in lines, 'CMD ["serve"]')
    c.check("EXPOSE 8080" in lines, "EXPOSE 8080")
    users = [ln for ln in lines if ln.startswith("USER ")]
    c.check(bool(users) and users[-1].split()[1].split(":")[0] == "10001", "runtime runs as uid 10001")
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    c.check(not any("cargo" in ln for ln in lines[last_from:] if ln.startswith("RUN")), "runtime stage has no toolchain")

    ignored = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    c.check("target" in ignored or "target/" in ignored or "/target" in ignored, ".dockerignore drops target/")
    c.check(".git" in ignored, ".dockerignore drops .git")
    # The workspace members must reach the build context.
    cargo = (ROOT / "Cargo.toml").read_text()
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", cargo)
    needed = ["Cargo.toml", "Cargo.lock", "src"] + [
        m for m in re.findall(r'"([^"]+)"', members.group(1) if members else "") if m != "."
    ]
    for path in needed:
        c.check(
            not any(pat.rstrip("/").lstrip("/") in (path, "*", "**") for pat in ignored),
            f".dockerignore keeps {path}",
        )
    return c.finish()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    what = argv[1]
    if what == "k8s" and len(argv) == 4 and argv[2] in FLAVORS:
        return check_k8s(argv[2], Path(argv[3]))
    if what == "secret-example":
        return check_secret_example()
    if what == "split" and len(argv) == 5:
        return split(Path(argv[2]), Path(argv[3]), Path(argv[4]))
    if what == "crds" and len(argv) >= 3:
        return check_crds([Path(p) for p in argv[2:]])
    if what == "rules":
        return check_rules()
    if what == "compose":
        return check_compose()
    if what == "grafana":
        return check_grafana()
    if what == "docker":
        return check_docker()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
