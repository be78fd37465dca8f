#!/usr/bin/env bash
# Lints what is shipped for containers and Prometheus, without a cluster or a Docker daemon:
#  1. yamllint (the repository's .yamllint) on packaging/kubernetes/*.yaml and
#     packaging/prometheus/*.yml: syntax, duplicate keys, indentation.
#  2. A structural check of what packaging/kubernetes/README.md promises about the example
#     StatefulSet (read-only data mount, probes on /healthz, non-root, flags that exist, a
#     grace period longer than the shutdown timeout) and of the Dockerfile (ENTRYPOINT
#     tablesnap, USER not root). yamllint is schema-free: without this, a manifest that
#     still parses but has lost readOnly: true would pass.
# Each problem is one line naming the file; the exit code is 1 if there is any.
#
#   bash scripts/lint-packaging.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# `python3 -m yamllint`, not `yamllint`: a fresh pip install may not be on PATH yet (pyenv
# shims, ~/.local/bin). Installed like .ci/run installs awscli.
if ! python3 -m yamllint --version >/dev/null 2>&1; then
    echo "lint-packaging: installing yamllint" >&2
    python3 -m pip install --quiet yamllint
fi

shopt -s nullglob
yaml=(packaging/kubernetes/*.yaml packaging/prometheus/*.yml)
if ((${#yaml[@]} == 0)); then
    echo "lint-packaging: no YAML under packaging/kubernetes or packaging/prometheus" >&2
    exit 1
fi
python3 -m yamllint --strict -c .yamllint "${yaml[@]}"

# PyYAML comes with yamllint.
python3 - packaging/kubernetes/cassandra-with-tablesnap.yaml Dockerfile src/cli/snap.rs Cargo.toml <<'EOF'
import re
import sys

import yaml

manifest, dockerfile, snap_rs, cargo_toml = sys.argv[1:5]
problems = []


def bad(path, what):
    problems.append(f"lint-packaging: {path}: {what}")


# --- The flags tablesnap accepts, from its clap definition (so the example's args are real).
src = open(snap_rs).read()
flags = set()
takes_value = set()
for attrs, field, ty in re.findall(r"#\[arg\((.*?)\)\]\s*pub (\w+):\s*([^,\n]+)", src, re.S):
    names = []
    short = re.search(r"short\s*=\s*'(.)'", attrs)
    if short:
        names.append("-" + short.group(1))
    long_ = re.search(r'\blong\s*=\s*"([^"]+)"', attrs)
    if long_:
        names.append("--" + long_.group(1))
    elif re.search(r"\blong\b(?!\s*=)", attrs):
        names.append("--" + field.replace("_", "-"))
    flags.update(names)
    if ty.strip() != "bool":
        takes_value.update(names)
if "--metrics-addr" not in flags or "-n" not in flags:
    bad(snap_rs, "could not read tablesnap's flags (is the clap definition still #[arg(...)] pub field?)")
default_timeout = re.search(
    r'long = "shutdown-timeout",\s*default_value_t = (\d+)', src)
default_timeout = int(default_timeout.group(1)) if default_timeout else 30

# --- The StatefulSet and its tablesnap sidecar.
docs = [d for d in yaml.safe_load_all(open(manifest)) if d]
sts = [d for d in docs if d.get("kind") == "StatefulSet"]
if len(sts) != 1:
    bad(manifest, f"expected one StatefulSet, found {len(sts)}")
else:
    sts = sts[0]
    pod = sts["spec"]["template"]["spec"]
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    side = [c for c in containers if c.get("name") == "tablesnap"]
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    if not claims:
        bad(manifest, "the StatefulSet has no volumeClaimTemplates (the Cassandra data volume)")
    if len(side) != 1:
        bad(manifest, "no container named tablesnap in the StatefulSet")
    else:
        side = side[0]
        where = "container tablesnap"
        # The data volume: read-only, at the path the Cassandra container mounts it.
        mounts = [m for m in side.get("volumeMounts", []) if m.get("name") in claims]
        if not mounts:
            bad(manifest, f"{where} does not mount the data volume ({', '.join(sorted(claims))})")
        for m in mounts:
            if m.get("readOnly") is not True:
                bad(manifest, f"{where}: volumeMount {m['name']} at {m.get('mountPath')} is not readOnly: true")
            for c in pod.get("containers", []):
                if c is side:
                    continue
                for cm in c.get("volumeMounts", []):
                    if cm.get("name") == m["name"] and cm.get("mountPath") != m.get("mountPath"):
                        bad(manifest, f"{where} mounts {m['name']} at {m.get('mountPath')}, "
                                      f"container {c.get('name')} at {cm.get('mountPath')}: keys would name other paths")
        # Metrics on 9108, on every address, in a port named metrics.
        args = [str(a) for a in side.get("args", [])]
        addr = None
        for i, a in enumerate(args):
            if a == "--metrics-addr" and i + 1 < len(args):
                addr = args[i + 1]
            elif a.startswith("--metrics-addr="):
                addr = a.split("=", 1)[1]
        if addr is None:
            bad(manifest, f"{where}: args have no --metrics-addr")
        elif not addr.endswith(":9108"):
            bad(manifest, f"{where}: --metrics-addr {addr} is not on port 9108")
        elif addr.startswith("127.") or addr.startswith("[::1]") or addr.startswith("localhost"):
            bad(manifest, f"{where}: --metrics-addr {addr} is loopback: the kubelet's probes cannot reach it")
        ports = {p.get("name"): p.get("containerPort") for p in side.get("ports", [])}
        if ports.get("metrics") != 9108:
            bad(manifest, f"{where}: no containerPort 9108 named metrics")
        # Every flag in args is one tablesnap has.
        i = 0
        while i < len(args):
            a = args[i]
            if a.startswith("-"):
                name = a.split("=", 1)[0]
                if name not in flags:
                    bad(manifest, f"{where}: tablesnap has no flag {name} (see {snap_rs})")
                elif name in takes_value and "=" not in a:
                    i += 1
            i += 1
        # Probes.
        for probe in ("livenessProbe", "readinessProbe"):
            get = (side.get(probe) or {}).get("httpGet") or {}
            if get.get("path") != "/healthz" or get.get("port") != "metrics":
                bad(manifest, f"{where}: {probe} is not httpGet /healthz on port metrics "
                              f"(path {get.get('path')!r}, port {get.get('port')!r})")
        # Not root, nothing writable, no privileges.
        sc = side.get("securityContext") or {}
        psc = pod.get("securityContext") or {}
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            bad(manifest, f"{where}: securityContext.runAsNonRoot is not true")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if uid == 0:
            bad(manifest, f"{where}: runAsUser is 0 (root)")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad(manifest, f"{where}: securityContext.readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad(manifest, f"{where}: securityContext.allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            bad(manifest, f"{where}: securityContext.capabilities.drop does not hold ALL")
        res = side.get("resources") or {}
        if not res.get("requests") or not res.get("limits"):
            bad(manifest, f"{where}: resources need both requests and limits")
        # The kubelet's SIGKILL must not cut the shutdown: --shutdown-timeout, then 5 s of aborts.
        timeout = default_timeout
        for i, a in enumerate(args):
            if a == "--shutdown-timeout" and i + 1 < len(args):
                timeout = int(args[i + 1])
            elif a.startswith("--shutdown-timeout="):
                timeout = int(a.split("=", 1)[1])
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace <= timeout + 5:
            bad(manifest, f"terminationGracePeriodSeconds {grace} is not more than "
                          f"--shutdown-timeout {timeout} + 5 s")

# --- The Dockerfile: a text check of its last (runtime) stage.
text = open(dockerfile).read()
stages = re.split(r"(?im)^FROM\s", text)
final = stages[-1] if len(stages) > 1 else ""
args_ = dict(re.findall(r"(?im)^ARG\s+(\w+)=(\S+)", final))
entry = re.findall(r"(?im)^ENTRYPOINT\s+(.*)$", final)
if not entry or not re.fullmatch(r'\[\s*"/usr/bin/tablesnap"\s*\]', entry[-1].strip()):
    bad(dockerfile, f"ENTRYPOINT of the runtime stage is not [\"/usr/bin/tablesnap\"] ({entry[-1] if entry else 'none'})")
users = re.findall(r"(?im)^USER\s+(\S+)", final)
if not users:
    bad(dockerfile, "the runtime stage has no USER: it would run as root")
else:
    user = re.sub(r"\$\{?(\w+)\}?", lambda m: args_.get(m.group(1), m.group(0)), users[-1])
    if user.split(":")[0] in ("root", "0", ""):
        bad(dockerfile, f"USER {users[-1]} is root")
if not re.search(r"(?im)^EXPOSE\s+9108\b", final):
    bad(dockerfile, "the runtime stage does not EXPOSE 9108")
version = re.search(r'(?m)^version\s*=\s*"([^"]+)"', open(cargo_toml).read()).group(1)
label = re.search(r'org\.opencontainers\.image\.version="([^"]*)"', text)
if not label or label.group(1) != version:
    bad(dockerfile, f"label org.opencontainers.image.version is {label.group(1) if label else 'missing'}, "
                    f"Cargo.toml says {version}")

for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
echo "lint-packaging: ok (${#yaml[@]} YAML files, the StatefulSet, the Dockerfile)"
