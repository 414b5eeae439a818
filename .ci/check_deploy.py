#!/usr/bin/env python3
"""Structure and policy checks for the deployment material, run by .ci/check-deploy.

Schema validation is done by kubernetes-validate, lint by yamllint and hadolint; this file
checks what no schema can: that the pieces agree with each other and with SPEC.md §9
(probes, drain timing, hardening, the compose topology, the dashboard's metric names).

    check_deploy.py k8s RENDERED.yaml     policy checks on `kubectl kustomize k8s/` output
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

# The metric names the server exposes (README "Observe"); the dashboard may use only these.
METRICS = {
    "chat_ws_connections": "gauge",
    "chat_messages_accepted_total": "counter",
    "chat_messages_delivered_total": "counter",
    "chat_fanout_latency_seconds": "histogram",
    "chat_commit_batch_size": "histogram",
    "http_requests_total": "counter",
    "http_request_duration_seconds": "histogram",
    "chat_slow_consumer_closes_total": "counter",
    "chat_redis_reconnects_total": "counter",
    "chat_bus_gap_fills_total": "counter",
    "chat_db_pool_connections": "gauge",
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


def check_k8s(rendered: Path) -> int:
    c = Checks("k8s")
    docs = load_all(rendered)
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    name = lambda d: f"{d['kind']}/{d['metadata']['name']}"  # noqa: E731

    # Layout: one namespace, everything in it, common labels, no Secret in the bundle.
    c.check(list(by_kind.get("Namespace", {})) == ["chat"], "exactly one Namespace, `chat`")
    for d in docs:
        if d["kind"] != "Namespace":
            c.check(d["metadata"].get("namespace") == "chat", f"{name(d)} is in namespace chat")
        c.check(dig(d, "metadata", "labels", "app.kubernetes.io/part-of") == "chat", f"{name(d)} has part-of=chat")
    c.check("Secret" not in by_kind, "the kustomization ships no Secret (secret.example.yaml stays out)")
    for kind in ("Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "ConfigMap"):
        c.check(bool(by_kind.get(kind)), f"the bundle has a {kind}")

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
            for res in ("requests", "limits"):
                c.check(
                    {"cpu", "memory"} <= set(dig(ctr, "resources", res, default={})),
                    f"{where}: cpu and memory {res}",
                )
            image = ctr.get("image", "")
            c.check(
                ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"),
                f"{where}: image {image!r} has an explicit, non-latest tag",
            )

    cm = by_kind.get("ConfigMap", {}).get("chat-server-config", {})
    cm_data = cm.get("data", {})
    c.check(bool(cm_data), "ConfigMap chat-server-config exists")
    for secret_key in ("JWT_SECRET", "DATABASE_URL", "REDIS_URL"):
        c.check(secret_key not in cm_data, f"{secret_key} is not in the ConfigMap (it belongs in the Secret)")
    grace = int(cm_data.get("SHUTDOWN_GRACE_SECS", "10"))

    # The server Deployment.
    dep = by_kind.get("Deployment", {}).get("chat-server")
    if c.check(dep is not None, "Deployment chat-server exists"):
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        pod_labels = spec["template"]["metadata"]["labels"]
        ctr = pod["containers"][0]
        c.check(spec.get("replicas") == 3, "chat-server: 3 replicas")
        c.check(labels_match(spec["selector"]["matchLabels"], pod_labels), "chat-server: selector matches pod labels")
        c.check(dig(spec, "strategy", "rollingUpdate", "maxUnavailable") == 0, "chat-server: maxUnavailable 0")
        c.check(dig(ctr, "readinessProbe", "httpGet", "path") == "/readyz", "chat-server: readiness on /readyz")
        c.check(dig(ctr, "livenessProbe", "httpGet", "path") == "/healthz", "chat-server: liveness on /healthz")
        c.check(ctr.get("args") == ["serve"], "chat-server: args [serve]")
        env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
        c.check(env.get("AUTO_MIGRATE") == "false", "chat-server: AUTO_MIGRATE=false")
        refs = {(k, dig(e, k, "name")) for e in ctr.get("envFrom", []) for k in e}
        c.check(("configMapRef", "chat-server-config") in refs, "chat-server: envFrom the ConfigMap")
        c.check(("secretRef", "chat-server-secrets") in refs, "chat-server: envFrom the Secret")
        ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
        c.check(ports.get("http") == 8080, "chat-server: port http=8080")
        cmd = dig(ctr, "lifecycle", "preStop", "exec", "command", default=[])
        sleep = int(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" and cmd[1].isdigit() else None
        if c.check(sleep is not None and sleep > 0, "chat-server: preStop is `sleep N`"):
            tgps = pod.get("terminationGracePeriodSeconds", 30)
            c.check(
                tgps > sleep + grace,
                f"chat-server: terminationGracePeriodSeconds {tgps} > preStop {sleep} + SHUTDOWN_GRACE_SECS {grace}",
            )
        psc = pod.get("securityContext", {})
        c.check(psc.get("runAsUser") == 10001, "chat-server: runs as uid 10001 (the image's user)")

        # Everything that points at the Deployment's pods.
        for svc in by_kind.get("Service", {}).values():
            if svc["metadata"]["name"] == "chat-server":
                c.check(labels_match(svc["spec"]["selector"], pod_labels), "Service chat-server selects the pods")
                for p in svc["spec"]["ports"]:
                    tp = p.get("targetPort")
                    c.check(tp in ports or tp in ports.values(), f"Service chat-server targetPort {tp} exists")
        c.check("chat-server" in by_kind.get("Service", {}), "Service chat-server exists")
        for pdb in by_kind.get("PodDisruptionBudget", {}).values():
            c.check(labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB selects the chat-server pods")
        for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
            ref = hpa["spec"]["scaleTargetRef"]
            c.check(hpa["apiVersion"] == "autoscaling/v2", "HPA is autoscaling/v2")
            c.check(ref["kind"] == "Deployment" and ref["name"] == "chat-server", "HPA targets Deployment chat-server")
            c.check(hpa["spec"].get("minReplicas", 1) >= 3, "HPA minReplicas >= 3")
            c.check(
                any(dig(m, "resource", "name") == "cpu" for m in hpa["spec"].get("metrics", [])), "HPA scales on CPU"
            )
            pool = int(cm_data.get("DB_MAX_CONNECTIONS", "20"))
            c.check(
                hpa["spec"]["maxReplicas"] * pool + 1 <= 100,
                f"HPA maxReplicas x DB_MAX_CONNECTIONS ({hpa['spec']['maxReplicas']} x {pool}) fits 100 PostgreSQL connections",
            )

        # The migrate Job runs the same image.
        job = by_kind.get("Job", {}).get("chat-server-migrate")
        if c.check(job is not None, "Job chat-server-migrate exists"):
            jctr = job["spec"]["template"]["spec"]["containers"][0]
            c.check(jctr.get("args") == ["migrate"], "migrate Job runs `chat-server migrate`")
            c.check(jctr.get("image") == ctr.get("image"), "migrate Job uses the Deployment's image")
            c.check(job["spec"]["template"]["spec"].get("restartPolicy") in ("Never", "OnFailure"), "migrate Job restartPolicy")

    # Ingress: nginx, WebSocket-friendly timeouts, backend exists.
    for ing in by_kind.get("Ingress", {}).values():
        ann = ing["metadata"].get("annotations", {})
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            val = ann.get(f"nginx.ingress.kubernetes.io/{key}", "0")
            c.check(val.isdigit() and int(val) >= 3600, f"Ingress {key} >= 3600")
        c.check(ann.get("nginx.ingress.kubernetes.io/proxy-http-version") == "1.1", "Ingress proxy-http-version 1.1")
        c.check(ing["spec"].get("ingressClassName") == "nginx", "Ingress class nginx")
        for rule in ing["spec"].get("rules", []):
            for path in dig(rule, "http", "paths", default=[]):
                svc_name = dig(path, "backend", "service", "name")
                svc = by_kind.get("Service", {}).get(svc_name)
                if c.check(svc is not None, f"Ingress backend Service {svc_name} exists"):
                    port = dig(path, "backend", "service", "port")
                    names = {p.get("name") for p in svc["spec"]["ports"]} | {p["port"] for p in svc["spec"]["ports"]}
                    c.check(port.get("name", port.get("number")) in names, f"Ingress backend port {port} exists")

    # Dev-only data stores are marked as such.
    for kind in ("StatefulSet", "Deployment", "Service"):
        for d in by_kind.get(kind, {}).values():
            if d["metadata"]["name"] in ("postgres", "redis"):
                c.check(
                    dig(d, "metadata", "labels", "chat.example.com/dev-only") == "true", f"{name(d)} is labelled dev-only"
                )

    # The example Secret holds placeholders only.
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
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    hosts = [
        t.split(":")[0]
        for job in prom.get("scrape_configs", [])
        for sc in job.get("static_configs", [])
        for t in sc.get("targets", [])
    ]
    for h in hosts:
        c.check(h in services, f"prometheus: target host {h} is a compose service")
    c.check(set(replicas) <= set(hosts), "prometheus: scrapes every chat replica")
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
            for name in re.findall(r"\b((?:chat|http)_[a-z_]+)\b", expr):
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
    if what == "k8s" and len(argv) == 3:
        return check_k8s(Path(argv[2]))
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
