"""Renders the chart with Helm's own engine and checks every manifest against the Kubernetes schemas.

There is no helm binary here: helm-sdkpy carries Helm as a library, but renders only by installing. So this
installs into a fake Kubernetes API server on loopback (discovery, an empty release store, every create
accepted and recorded) and takes the manifest Helm sent. Then kubernetes-validate checks each document against
the schemas of the Kubernetes versions the chart supports, and a few assertions check what the chart promises.

    python check.py CHART  (deploy/check.sh sets up the packages)
"""

import asyncio
import json
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes_validate
import kubernetes_validate.utils
import yaml
from helm_sdkpy import Configuration, Install, Lint

RESOURCES = {
    "/api/v1": [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("namespaces", "Namespace", False),
    ],
    "/apis/apps/v1": [("statefulsets", "StatefulSet", True)],
    "/apis/networking.k8s.io/v1": [("ingresses", "Ingress", True)],
}
# The Prometheus Operator's CRD, served only when a render says the cluster has it.
OPERATOR = {"/apis/monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True)]}


class FakeApi(BaseHTTPRequestHandler):
    created = []  # (kind, body) of every object Helm created
    secrets = {}
    resources = RESOURCES

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self):
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0", "platform": "linux/amd64"})
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = []
            for prefix in self.resources:
                if prefix.startswith("/apis/"):
                    group, version = prefix[len("/apis/"):].split("/")
                    gv = {"groupVersion": f"{group}/{version}", "version": version}
                    groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if path in self.resources:
            gv = path[len("/api/"):] if path.startswith("/api/") else path[len("/apis/"):]
            return self.reply(200, {
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                "resources": [
                    {"name": n, "singularName": k.lower(), "namespaced": ns, "kind": k,
                     "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                    for n, k, ns in self.resources[path]
                ],
            })
        if path.endswith("/secrets"):
            return self.reply(200, {"kind": "SecretList", "apiVersion": "v1", "metadata": {},
                                    "items": list(self.secrets.values())})
        if "/secrets/" in path and path.rsplit("/", 1)[1] in self.secrets:
            return self.reply(200, self.secrets[path.rsplit("/", 1)[1]])
        return self.not_found()

    def body(self):
        """The object sent, or None for Helm's own release record (a Secret it sends as protobuf)."""
        data = self.rfile.read(int(self.headers["Content-Length"]))
        if "protobuf" in self.headers.get("Content-Type", ""):
            return None
        return json.loads(data or b"{}")

    def do_POST(self):
        obj = self.body()
        if obj is None:
            return self.reply(201, {"kind": "Secret", "apiVersion": "v1",
                                    "metadata": {"name": "release", "resourceVersion": "1"}})
        obj.setdefault("metadata", {}).setdefault("resourceVersion", "1")
        self.created.append(obj)
        self.reply(201, obj)

    def do_PUT(self):
        obj = self.body() or {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "release"}}
        self.reply(200, obj)

    do_PATCH = do_PUT


def render(chart, values, operator=False):
    FakeApi.created, FakeApi.secrets = [], {}
    FakeApi.resources = {**RESOURCES, **OPERATOR} if operator else RESOURCES
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig") as kubeconfig:
        yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "nightshift"}}],
            "users": [{"name": "fake", "user": {"token": "x"}}],
        }, kubeconfig)
        kubeconfig.flush()
        config = Configuration(namespace="nightshift", kubeconfig=kubeconfig.name)
        asyncio.run(Install(config).run("ns", chart, values=values, wait=False, timeout=60))
    server.shutdown()
    return FakeApi.created


def lint(chart):
    result = asyncio.run(Lint(Configuration(namespace="nightshift")).run(chart))
    errors = [m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2]
    assert not errors and not result.get("Errors"), f"helm lint: {result}"


# The oldest Kubernetes the chart allows (Chart.yaml's kubeVersion) and the newest the schemas know.
VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())


def validate(objects, label):
    # The operator's kinds have no Kubernetes schema: main() checks them field by field.
    objects = [o for o in objects if not o["apiVersion"].startswith("monitoring.coreos.com/")]
    for obj in objects:
        for version in VERSIONS:
            # Strict: a field the schema does not have (a typo, a field of a newer version) is an error.
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                raise AssertionError(f"{label}: {obj['kind']} {obj['metadata']['name']} ({version}): {path}: {e.message}")
    print(f"{label}: {len(objects)} objects valid (strict) against the Kubernetes {' and '.join(VERSIONS)} schemas:",
          ", ".join(sorted(o["kind"] for o in objects)))


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def main(chart):
    lint(chart)

    # One replica on SQLite, with an App and model keys.
    sqlite = render(chart, {"github": {"appId": "12345"}, "secrets": {"modelKeys": "model-keys"},
                            "triggers": {"fix.yml": "on: {issues: {types: [labeled]}}\nagent: fixer\n"},
                            "skills": {"notes": {"SKILL.md": "---\nname: notes\n---\n"}},
                            "ingress": {"enabled": True, "tls": {"secretName": "nightshift-tls"}}})
    validate(sqlite, "sqlite")
    [sts] = by_kind(sqlite, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    config = yaml.safe_load(next(c for c in by_kind(sqlite, "ConfigMap") if c["metadata"]["name"].endswith("-config"))
                            ["data"]["nightshift.yml"])
    assert sts["spec"]["replicas"] == 1
    # tests/deploy.rs loads this same merge (the chart's keys, then the values' `config:`) with nightshift's
    # own config loader; here Helm is shown to write exactly that.
    with open(f"{chart}/values.yaml") as f:
        defaults = yaml.safe_load(f)["config"]
    assert config == {"listen": "0.0.0.0:3000", "data_dir": "/var/lib/nightshift",
                      "triggers": "/etc/nightshift/triggers", "skills": "/etc/nightshift/skills",
                      "store": "sqlite:///var/lib/nightshift/nightshift.db", **defaults}, config
    assert "NIGHTSHIFT_STORE" not in env
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] >= 600 + 30
    assert pod["hostUsers"] is False and container["securityContext"]["procMount"] == "Unmasked"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert not container["securityContext"]["allowPrivilegeEscalation"]
    assert env["NIGHTSHIFT_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "webhook-secret"
    assert env["NIGHTSHIFT_GITHUB_PRIVATE_KEY"]["value"] == "/run/secrets/nightshift/app.pem"
    assert container["envFrom"] == [{"secretRef": {"name": "model-keys"}}]
    assert pod["automountServiceAccountToken"] is False
    [ingress] = by_kind(sqlite, "Ingress")
    assert [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]] == ["/webhooks/github"]
    # With the dashboard: its paths and setup's, never the probes' or /metrics (an Exact `/`, no `/` prefix).
    dash = render(chart, {"ingress": {"enabled": True, "dashboard": True}})
    validate(dash, "dashboard")
    [ingress] = by_kind(dash, "Ingress")
    paths = {p["path"]: p["pathType"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths["/"] == "Exact" and paths["/jobs"] == "Prefix" and paths["/auth"] == "Prefix", paths
    assert not any(p.startswith(("/metrics", "/healthz", "/readyz")) for p in paths), paths
    for obj in sqlite:  # no secret's value ever lives in the chart
        assert obj["kind"] != "Secret", obj

    # Three replicas on Postgres, the URL from a Secret.
    pg = render(chart, {"replicas": 3, "store": {"type": "postgres", "urlSecret": {"name": "db"}}})
    validate(pg, "postgres")
    [sts] = by_kind(pg, "StatefulSet")
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    config = yaml.safe_load(next(c for c in by_kind(pg, "ConfigMap") if c["metadata"]["name"].endswith("-config"))
                            ["data"]["nightshift.yml"])
    assert sts["spec"]["replicas"] == 3
    assert env["NIGHTSHIFT_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "store-url"}
    assert "store" not in config, config

    # What must not render.
    for values, why in [({"replicas": 2}, "sqlite runs one replica"),
                        ({"store": {"type": "postgres"}}, "needs store.urlSecret.name"),
                        ({"persistence": {"enabled": False}}, "persistence.enabled must be true")]:
        try:
            render(chart, values)
        except Exception as e:  # noqa: BLE001 (helm-sdkpy's InstallError)
            assert why in str(e), f"{values}: {e}"
        else:
            raise AssertionError(f"{values} rendered; it must fail with: {why}")
    print("refused: sqlite with 2 replicas, postgres without a URL secret, sqlite without a volume")

    # Prometheus: a ServiceMonitor on the traffic Service only (each pod scraped once), with the metrics token.
    monitored = render(chart, {"metrics": {"tokenKey": "metrics-token",
                                           "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}},
                       operator=True)
    validate(monitored, "servicemonitor")
    [monitor] = by_kind(monitored, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [s for s in by_kind(monitored, "Service")
                if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())]
    assert [s["spec"].get("clusterIP") for s in services] == [None], services  # not the headless one
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {"type": "Bearer",
                                         "credentials": {"name": "nightshift", "key": "metrics-token"}}
    [sts] = by_kind(monitored, "StatefulSet")
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NIGHTSHIFT_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "nightshift",
                                                                           "key": "metrics-token"}
    try:
        render(chart, {"metrics": {"serviceMonitor": {"enabled": True}}})
    except Exception as e:  # noqa: BLE001
        assert "Prometheus Operator" in str(e), e
    else:
        raise AssertionError("a ServiceMonitor rendered for a cluster without the operator's CRDs")
    print("servicemonitor: the traffic Service only, bearer token from the Secret; refused without the CRDs")


if __name__ == "__main__":
    main(sys.argv[1])
