"""Checks deploy/k8s: every manifest against the Kubernetes schemas (kubernetes-validate,
strict), KEDA's objects against keda-schema.json, and that the manifests agree with each other
and with rask (secret keys, names, selectors, the grace period, the queue). Exits 1 with one
line per problem. Run by scripts/validate-k8s.sh."""

import json
import pathlib
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.31"
# rask's default task queue (settings `queue`), which the KEDA trigger watches.
TASK_QUEUE = "rask.tasks"

here = pathlib.Path(__file__).resolve().parent
manifests = here.parent.parent / "deploy" / "k8s"
keda_schema = json.loads((here / "keda-schema.json").read_text())
problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


documents = {}
for path in sorted(manifests.glob("*.yaml")):
    documents[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]

objects = []
for name, docs in documents.items():
    for doc in docs:
        kind = doc.get("kind")
        where = f"{name} {kind}/{doc.get('metadata', {}).get('name')}"
        if kind == "Kustomization":
            continue
        if doc.get("apiVersion", "").startswith("keda.sh/"):
            try:
                jsonschema.validate(doc, keda_schema)
            except jsonschema.ValidationError as e:
                problem(where, f"not a valid KEDA object: {e.message}")
        else:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problem(where, f"{'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problem(where, f"no schema: {e}")
        objects.append((where, doc))


def of_kind(kind):
    return [(w, d) for w, d in objects if d["kind"] == kind]


# The kustomization names every manifest but the secret's example.
kustomized = set(documents["kustomization.yaml"][0]["resources"])
expected = set(documents) - {"kustomization.yaml", "secret.example.yaml"}
if kustomized != expected:
    problem("kustomization.yaml", f"resources {sorted(kustomized)}, files {sorted(expected)}")

# Every secret reference names a key of the example Secret.
secret = of_kind("Secret")[0][1]
keys = set(secret["stringData"])
for where, doc in objects:
    text = json.dumps(doc)
    for ref in re.findall(r'"secretKeyRef": \{"name": "([^"]+)", "key": "([^"]+)"\}', text):
        if ref[0] != secret["metadata"]["name"] or ref[1] not in keys:
            problem(where, f"refers to secret {ref[0]} key {ref[1]}, which the example lacks")
    for ref in doc.get("spec", {}).get("secretTargetRef", []):
        if ref["key"] not in keys:
            problem(where, f"refers to secret key {ref['key']}, which the example lacks")

deployments = {d["metadata"]["name"]: (w, d) for w, d in of_kind("Deployment")}
for where, doc in deployments.values():
    spec = doc["spec"]["template"]["spec"]
    labels = doc["spec"]["template"]["metadata"]["labels"]
    if doc["spec"]["selector"]["matchLabels"].items() - labels.items():
        problem(where, "the selector does not match the pod template's labels")
    for container in spec["containers"]:
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        ports = {p.get("name") for p in container.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            http = container.get(probe, {}).get("httpGet")
            if http is None:
                problem(where, f"{container['name']} has no HTTP {probe}")
            elif http["path"] != "/health" or http["port"] not in ports:
                problem(where, f"{probe} is not /health on a port the container names")
        grace = env.get("RASK_SHUTDOWN_GRACE", "30s")
        seconds = int(re.fullmatch(r"(\d+)s", grace).group(1))
        if spec.get("terminationGracePeriodSeconds", 30) <= seconds:
            problem(where, f"terminationGracePeriodSeconds is not above shutdown_grace {grace}")
        if not container.get("resources", {}).get("requests"):
            problem(where, f"{container['name']} requests no resources")

for where, doc in of_kind("PodDisruptionBudget"):
    selector = doc["spec"]["selector"]["matchLabels"]
    if not any(
        selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        for _, d in deployments.values()
    ):
        problem(where, "selects no Deployment's pods")

for where, doc in of_kind("ScaledObject"):
    if doc["spec"]["scaleTargetRef"]["name"] not in deployments:
        problem(where, "scales no Deployment of these manifests")
    for trigger in doc["spec"]["triggers"]:
        if trigger["metadata"]["queueName"] != TASK_QUEUE:
            problem(where, f"watches {trigger['metadata']['queueName']}, not {TASK_QUEUE}")

for line in problems:
    print(line, file=sys.stderr)
print(f"deploy/k8s: {len(objects)} objects checked, {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
