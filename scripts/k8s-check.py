"""Offline checks of deploy/k8s, run by scripts/k8s-validate.sh inside its venv.

- The kustomization lists every manifest in the directory, and each listed file exists.
- Every built-in resource validates (strict: unknown fields fail) against the Kubernetes
  schemas that the `kubernetes-validate` package ships, for the oldest and newest versions
  checked here.
- KEDA's ScaledObject and TriggerAuthentication are CRDs that package has no schema for: they
  get a structural check of their own (apiVersion, kind, the scale target is the worker
  Deployment, the trigger reads the `requests` queue of the configured prefix, the
  authentication it names exists and reads keys the Secret has).
- Every environment variable the manifests pass — `env` names and the keys of ConfigMaps
  used through `envFrom` — is a real setting: SLUICE__SECTION__KEY of config/default.toml, or
  one of the documented variables outside that namespace.
- Every secretKeyRef / configMapRef names an object and a key that the manifests define.
- Secrets: no Secret with values is in the repository; `sluice-secrets` comes from the
  kustomization's secretGenerator over the untracked secrets.env (its keys are read from
  secrets.env.example when secrets.env is absent, and every example value is a placeholder the
  API refuses). The API gets no provider key, the workers no JWT secret or admin token, and only
  the migration Job the schema owner's database URL.
- The wiring: every pod runs non-root; the API listens on 0.0.0.0 at its container port and
  does not migrate at start; it serves /metrics on 0.0.0.0 at its container port `metrics`,
  which the pod's prometheus.io/port annotation names and no Service exposes; each worker's health listener is on 0.0.0.0 at the port its
  probes use; the Job runs `sluice-api migrate`.

Usage: python scripts/k8s-check.py [DIR]   (default deploy/k8s; run from the repository root)
"""

import pathlib
import re
import sys
import tomllib

import kubernetes_validate
import yaml

KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# Read outside the SLUICE__ namespace (README, "Settings"; shared/src/telemetry.rs).
OTHER_VARIABLES = {"GEMINI_API_KEYS", "RUST_LOG"}
WORKER_DEPLOYMENT = "sluice-worker"
# Topology::requests() in shared/src/topology.rs: the prefix, then this.
REQUESTS_SUFFIX = "requests"

failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")


def setting_names(defaults_path):
    """SLUICE__SECTION__KEY for every key of every section of config/default.toml."""
    with open(defaults_path, "rb") as f:
        defaults = tomllib.load(f)
    return {
        f"SLUICE__{section.upper()}__{key.upper()}"
        for section, table in defaults.items()
        if isinstance(table, dict)
        for key in table
    }


def load_one(path):
    with open(path, encoding="utf-8") as f:
        documents = [d for d in yaml.safe_load_all(f) if d is not None]
    if len(documents) != 1:
        fail(path, f"expected one YAML document, found {len(documents)}")
        return None
    document = documents[0]
    for field in ("apiVersion", "kind"):
        if not document.get(field):
            fail(path, f"no {field}")
    return document


def pod_specs(resource):
    """The pod spec of a Deployment or Job, else nothing."""
    if resource.get("kind") in ("Deployment", "Job"):
        yield resource["spec"]["template"]["spec"]


def containers(resource):
    for spec in pod_specs(resource):
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def check_kubernetes(path, resource):
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(path, f"Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(path, f"Kubernetes {version}: no schema: {e}")


def check_keda(path, resource, by_kind, prefix):
    kind = resource.get("kind")
    if resource.get("apiVersion") != "keda.sh/v1alpha1":
        fail(path, f"apiVersion {resource.get('apiVersion')!r}, expected keda.sh/v1alpha1")
    if not resource.get("metadata", {}).get("name"):
        fail(path, "no metadata.name")
    spec = resource.get("spec") or {}
    if kind == "TriggerAuthentication":
        refs = spec.get("secretTargetRef") or []
        if not refs:
            fail(path, "no secretTargetRef")
        for ref in refs:
            check_secret_key(path, by_kind, ref.get("name"), ref.get("key"))
            if ref.get("parameter") != "host":
                fail(path, f"parameter {ref.get('parameter')!r}: the rabbitmq scaler reads host")
        return
    if kind != "ScaledObject":
        fail(path, f"unexpected KEDA kind {kind}")
        return
    target = spec.get("scaleTargetRef") or {}
    if target.get("name") != WORKER_DEPLOYMENT:
        fail(path, f"scaleTargetRef.name {target.get('name')!r}, expected {WORKER_DEPLOYMENT}")
    if target.get("kind", "Deployment") != "Deployment":
        fail(path, f"scaleTargetRef.kind {target.get('kind')!r}, expected Deployment")
    if target.get("apiVersion", "apps/v1") != "apps/v1":
        fail(path, f"scaleTargetRef.apiVersion {target.get('apiVersion')!r}, expected apps/v1")
    if WORKER_DEPLOYMENT not in by_kind.get("Deployment", {}):
        fail(path, f"no Deployment {WORKER_DEPLOYMENT} in the manifests")
    minimum = spec.get("minReplicaCount", 0)
    maximum = spec.get("maxReplicaCount")
    if not isinstance(maximum, int) or not isinstance(minimum, int) or not 1 <= maximum <= 100:
        fail(path, f"maxReplicaCount {maximum!r}: set a sane cap (1..=100)")
    elif minimum > maximum:
        fail(path, f"minReplicaCount {minimum} > maxReplicaCount {maximum}")
    triggers = spec.get("triggers") or []
    if len(triggers) != 1:
        fail(path, f"expected one trigger, found {len(triggers)}")
    for trigger in triggers:
        metadata = trigger.get("metadata") or {}
        if trigger.get("type") != "rabbitmq":
            fail(path, f"trigger type {trigger.get('type')!r}, expected rabbitmq")
        if metadata.get("mode") != "QueueLength":
            fail(path, f"trigger mode {metadata.get('mode')!r}, expected QueueLength")
        expected = prefix + REQUESTS_SUFFIX
        if metadata.get("queueName") != expected:
            fail(path, f"queueName {metadata.get('queueName')!r}, expected {expected!r}")
        value = str(metadata.get("value", ""))
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value) or float(value) <= 0:
            fail(path, f"trigger value {value!r}: a positive number (messages per worker)")
        if metadata.get("host"):
            fail(path, "host in the ScaledObject: it carries a password; use the Secret")
        auth = (trigger.get("authenticationRef") or {}).get("name")
        if auth not in by_kind.get("TriggerAuthentication", {}):
            fail(path, f"authenticationRef {auth!r} names no TriggerAuthentication here")


def check_secret_key(path, by_kind, name, key):
    secret = by_kind.get("Secret", {}).get(name)
    if secret is None:
        fail(path, f"Secret {name!r} is not in the manifests")
        return
    keys = set((secret.get("stringData") or {}).keys()) | set((secret.get("data") or {}).keys())
    if key not in keys:
        fail(path, f"Secret {name} has no key {key!r}")


def check_environment(path, resource, by_kind, settings):
    for container in containers(resource):
        where = f"{path} ({container.get('name')})"
        names = []
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                name = source["configMapRef"].get("name")
                config_map = by_kind.get("ConfigMap", {}).get(name)
                if config_map is None:
                    fail(where, f"ConfigMap {name!r} is not in the manifests")
                else:
                    names += list((config_map.get("data") or {}).keys())
            else:
                fail(where, "envFrom other than a ConfigMap: its names cannot be checked")
        for variable in container.get("env", []):
            names.append(variable["name"])
            ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                check_secret_key(where, by_kind, ref.get("name"), ref.get("key"))
        for name in names:
            if name.startswith("SLUICE__"):
                if name not in settings:
                    fail(where, f"{name} is not a setting of config/default.toml")
            elif name not in OTHER_VARIABLES:
                fail(where, f"{name} is neither a SLUICE__ setting nor one of {sorted(OTHER_VARIABLES)}")
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            fail(where, f"set twice (env wins over envFrom, silently): {sorted(duplicates)}")


def read_env_file(path):
    """KEY=VALUE lines, as kustomize reads a secretGenerator's `envs` file."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


def generated_secrets(root, kustomization):
    """The Secrets of the secretGenerator, with their keys, as kustomize would make them."""
    secrets = {}
    for generator in kustomization.get("secretGenerator") or []:
        name = generator.get("name")
        if generator.get("literals") or generator.get("files"):
            fail("kustomization.yaml", f"secretGenerator {name}: values in the repository; use envs")
        if not (generator.get("options") or {}).get("disableNameSuffixHash"):
            # KEDA's TriggerAuthentication names the Secret, and kustomize does not rewrite it.
            fail("kustomization.yaml", f"secretGenerator {name}: needs disableNameSuffixHash")
        keys = {}
        for env in generator.get("envs") or []:
            path = root / env
            example = root / (env + ".example")
            if not example.exists():
                fail("kustomization.yaml", f"{env} has no tracked {example.name}")
                continue
            for key, value in read_env_file(example).items():
                if "change-me" not in value.lower():
                    fail(example.name, f"{key}: not a placeholder the API refuses (holds no change-me)")
            keys.update(read_env_file(path if path.exists() else example))
        secrets[name] = {"kind": "Secret", "metadata": {"name": name}, "stringData": keys}
    gitignore = pathlib.Path(".gitignore").read_text(encoding="utf-8").split()
    for generator in kustomization.get("secretGenerator") or []:
        for env in generator.get("envs") or []:
            if f"/{root}/{env}" not in gitignore:
                fail(".gitignore", f"/{root}/{env} (secret values) is not ignored")
    return secrets


SECRET_SETTINGS = {
    # key in sluice-secrets -> the containers that may read it
    "jwt-secret": {"sluice-api"},
    "admin-token": {"sluice-api"},
    "gemini-api-keys": {"sluice-worker"},
    "database-url": {"sluice-api"},
    "migrate-database-url": {"sluice-api migrate"},
}


def check_secret_reach(path, resource):
    """Each process reads only its own secrets."""
    for container in containers(resource):
        command = " ".join(container.get("command") or [])
        where = f"{path} ({container.get('name')})"
        for variable in container.get("env", []):
            ref = (variable.get("valueFrom") or {}).get("secretKeyRef") or {}
            allowed = SECRET_SETTINGS.get(ref.get("key"))
            if allowed is not None and command not in allowed:
                fail(where, f"{command} must not read {ref.get('key')}")
            if command != "sluice-worker" and variable["name"] in ("GEMINI_API_KEYS", "SLUICE__KEYS__FILE"):
                fail(where, f"{variable['name']}: only the workers hold provider keys")
            if command != "sluice-api" and variable["name"] in ("SLUICE__AUTH__JWT_SECRET", "SLUICE__ADMIN__TOKEN"):
                fail(where, f"{variable['name']}: only the API holds it")
        names = {v["name"] for v in container.get("env", [])}
        if command == "sluice-api" and "SLUICE__KEYS__ALIASES" not in names:
            fail(where, "the API lists the keys by SLUICE__KEYS__ALIASES")


def env_value(container, name):
    for variable in container.get("env", []):
        if variable["name"] == name:
            return variable.get("value")
    return None


def listens_on_all_interfaces(where, container, setting, port_name, probed=True):
    """`setting` binds 0.0.0.0 at the container port `port_name`, which the probes use (if
    `probed`)."""
    address = env_value(container, setting) or ""
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    if port_name not in ports:
        fail(where, f"no container port named {port_name!r}")
    elif address != f"0.0.0.0:{ports[port_name]}":
        fail(where, f"{setting}={address!r}: must be 0.0.0.0:{ports[port_name]}, reachable in the pod network")
    if not probed:
        return
    for probe in ("livenessProbe", "readinessProbe"):
        target = (container.get(probe) or {}).get("httpGet", {}).get("port")
        if target not in (port_name, ports.get(port_name)):
            fail(where, f"{probe} does not use port {port_name!r}")


def check_scrape_annotations(path, resource, container):
    """The pod's prometheus.io annotations point at the container port `metrics`."""
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    annotations = resource["spec"]["template"].get("metadata", {}).get("annotations") or {}
    wanted = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ports.get("metrics")),
        "prometheus.io/path": "/metrics",
    }
    for key, value in wanted.items():
        if annotations.get(key) != value:
            fail(path, f"pod annotation {key}={annotations.get(key)!r}: must be {value!r}")


def check_metrics_not_exposed(path, resource):
    """No Service reaches the API's metrics port: only the pod network scrapes it."""
    if resource.get("kind") != "Service":
        return
    for port in resource.get("spec", {}).get("ports", []):
        if port.get("targetPort") in ("metrics", 9464) or port.get("port") == 9464:
            fail(path, f"the Service exposes the API's metrics port ({port.get('name')!r})")


def check_wiring(path, resource):
    for spec in pod_specs(resource):
        if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
            fail(path, "the pod does not set securityContext.runAsNonRoot")
    for container in containers(resource):
        where = f"{path} ({container.get('name')})"
        command = container.get("command") or []
        if command == ["sluice-api"]:
            listens_on_all_interfaces(where, container, "SLUICE__HTTP__ADDR", "http")
            listens_on_all_interfaces(
                where, container, "SLUICE__HTTP__METRICS_ADDR", "metrics", probed=False
            )
            check_scrape_annotations(path, resource, container)
            if env_value(container, "SLUICE__DATABASE__MIGRATE_ON_START") != "false":
                fail(where, "the API must not migrate at start: the migration Job does")
        elif command == ["sluice-worker"]:
            listens_on_all_interfaces(where, container, "SLUICE__WORKER__HEALTH_ADDR", "health")
        elif command != ["sluice-api", "migrate"]:
            fail(where, f"unexpected command {command!r}")
        if resource.get("kind") == "Job" and command != ["sluice-api", "migrate"]:
            fail(where, "the Job must run `sluice-api migrate`")


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/k8s")
    settings = setting_names("config/default.toml")
    if f"SLUICE__WORKER__HEALTH_ADDR" not in settings:
        sys.exit("config/default.toml does not look like Sluice's settings")
    topology = pathlib.Path("shared/src/topology.rs").read_text(encoding="utf-8")
    if f'format!("{{}}{REQUESTS_SUFFIX}", self.prefix)' not in topology:
        sys.exit(f"shared/src/topology.rs no longer names the queue prefix + {REQUESTS_SUFFIX!r}")

    kustomization = load_one(root / "kustomization.yaml") or {}
    listed = kustomization.get("resources") or []
    if len(set(listed)) != len(listed):
        fail("kustomization.yaml", "a resource is listed twice")
    present = {p.name for p in root.glob("*.yaml")} | {p.name for p in root.glob("*.yml")}
    present.discard("kustomization.yaml")
    for name in sorted(present - set(listed)):
        fail("kustomization.yaml", f"{name} is not listed in resources")
    for name in listed:
        if name not in present:
            fail("kustomization.yaml", f"{name} is listed but missing")

    resources = {}
    for name in listed:
        if name in present:
            resource = load_one(root / name)
            if resource is not None:
                resources[root / name] = resource
    by_kind = {}
    for path, resource in resources.items():
        name = resource.get("metadata", {}).get("name")
        by_kind.setdefault(resource.get("kind"), {})[name] = resource
        if resource.get("kind") == "Secret" and (resource.get("data") or resource.get("stringData")):
            fail(path, "a Secret with values in the repository: use the secretGenerator")
    by_kind.setdefault("Secret", {}).update(generated_secrets(root, kustomization))

    config_maps = by_kind.get("ConfigMap", {}).values()
    prefixes = {c.get("data", {}).get("SLUICE__QUEUES__PREFIX") for c in config_maps} - {None}
    with open("config/default.toml", "rb") as f:
        prefix = tomllib.load(f)["queues"]["prefix"]
    if len(prefixes) > 1:
        fail("ConfigMaps", f"disagree on SLUICE__QUEUES__PREFIX: {sorted(prefixes)}")
    elif prefixes:
        prefix = prefixes.pop()

    checked = []
    for path, resource in resources.items():
        if str(resource.get("apiVersion", "")).startswith("keda.sh/"):
            check_keda(path, resource, by_kind, prefix)
            checked.append(f"{path.name}: {resource.get('kind')} (structural check; CRD)")
        else:
            check_kubernetes(path, resource)
            checked.append(f"{path.name}: {resource.get('kind')} (schemas {', '.join(KUBERNETES_VERSIONS)})")
        check_environment(path, resource, by_kind, settings)
        check_secret_reach(path, resource)
        check_wiring(path, resource)
        check_metrics_not_exposed(path, resource)

    if failures:
        for line in failures:
            print(f"k8s: FAIL {line}", file=sys.stderr)
        print(f"k8s: {len(failures)} problem(s) in {root}", file=sys.stderr)
        sys.exit(1)
    for line in checked:
        print(f"k8s: ok {line}", file=sys.stderr)
    print(f"k8s: {len(checked)} manifests in {root} valid; every SLUICE__* name is a setting", file=sys.stderr)


if __name__ == "__main__":
    main()
