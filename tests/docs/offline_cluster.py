"""kubectl and helm as ``cluster`` blocks call them, without a cluster: ``offline_cluster.py TOOL ARGS``.

Two checks per call, exit 0 only if both pass:

1. **As written**, against an unreachable API server (``KUBECONFIG`` names a closed loopback port): the tool
   parses its own flags, files, jsonpath and chart before it connects, so the call must succeed or fail only
   with "connection refused" / "cluster unreachable" — never an unknown flag or a missing file.
2. **The offline form** of what it would do: ``kubectl create`` → ``--dry-run=client -o yaml``; ``kubectl
   patch`` → ``patch --local`` on a stand-in object; ``kubectl apply -f`` → the files decoded by kubectl
   (``annotate --local``) and validated with kubernetes-validate (if installed); ``-o jsonpath=`` → the
   template compiled by kubectl; ``helm install/upgrade`` → ``helm template`` with the same arguments and
   ``helm lint --strict``; ``helm test`` → the test hooks (``--filter name=``) in the release rendered as the
   block's ``helm install`` would install it.

The real binaries come from ``DOCS_KUBECTL``/``DOCS_HELM``; ``DOCS_STATE`` keeps each ``helm install``'s
arguments for a later ``helm test`` of the same release.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

UNREACHABLE = re.compile(r"connection refused|to the server .* was refused|cluster unreachable", re.I)
KUBECTL_VALUE_FLAGS = {"-n", "--namespace", "-f", "--filename", "-o", "--output", "-l", "--selector", "-c",
                       "--container", "--type", "--patch-file", "-p", "--patch", "--context", "--for",
                       "--timeout", "--from-literal", "--from-file"}  # fmt: skip
HELM_VALUES = {"-f", "--values", "--set", "--set-string", "--set-file", "--set-json"}
HELM_VALUE_FLAGS = {"-n", "--namespace", "--timeout", "--version", "--filter", "--kube-context", *HELM_VALUES}
STAND_INS = {  # kubectl patch TYPE: what the stand-in object is
    ("configmap", "configmaps", "cm"): ("v1", "ConfigMap"),
    ("secret", "secrets"): ("v1", "Secret"),
    ("namespace", "namespaces", "ns"): ("v1", "Namespace"),
    ("deployment", "deployments", "deploy"): ("apps/v1", "Deployment"),
    ("inferenceservice", "inferenceservices", "isvc"): ("serving.kserve.io/v1beta1", "InferenceService"),
    ("virtualservice", "virtualservices", "vs"): ("networking.istio.io/v1", "VirtualService"),
}


class Failed(Exception):
    """The call would not work as written."""


def split_args(args: list[str], value_flags: set[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Positional arguments, and each flag's values (``--x=y`` and ``--x y``)."""
    positional, flags, i = [], {}, 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and "=" in arg:
            name, value = arg.split("=", 1)
            flags.setdefault(name, []).append(value)
        elif arg in value_flags and i + 1 < len(args):
            flags.setdefault(arg, []).append(args[i + 1])
            i += 1
        elif arg.startswith("-"):
            flags.setdefault(arg, []).append("")
        else:
            positional.append(arg)
        i += 1
    return positional, flags


def call(cmd: list[str], what: str) -> str:
    """Run an offline form: it must exit 0; its output."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise Failed(f"{what}: `{' '.join(cmd)}` exited {done.returncode}: {done.stdout}{done.stderr}")
    print(f"offline: {what} ok: {' '.join(cmd)}")
    return done.stdout


def as_written(cmd: list[str]) -> None:
    """The call as the block makes it, against an unreachable cluster: only the connection may fail."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    if done.returncode != 0 and not UNREACHABLE.search(output):
        raise Failed(f"as written, `{' '.join(cmd)}` failed before reaching the cluster:\n{output}")
    print(f"offline: as written, it got as far as the cluster: {' '.join(cmd[1:])}")


def kubectl(real: str, args: list[str]) -> None:
    as_written([real, *args])
    positional, flags = split_args(args, KUBECTL_VALUE_FLAGS)
    verb = positional[0] if positional else ""
    for template in [o.split("=", 1)[1] for o in flags.get("-o", []) + flags.get("--output", [])
                     if o.startswith("jsonpath=")]:  # fmt: skip
        call([real, "create", "configmap", "docs-jsonpath", "--dry-run=client", "-o", f"jsonpath={template}"],
             "jsonpath compiles")  # fmt: skip
    if verb == "create":
        print(call([real, *args, "--dry-run=client", "-o", "yaml"], "create --dry-run=client"))
    elif verb == "apply":
        for name in flags.get("-f", []) + flags.get("--filename", []):
            if not Path(name).exists():
                raise Failed(f"apply: {name} does not exist")
            call([real, "annotate", "--local", "-f", name, "docs=offline", "-o", "yaml"], "kubectl reads it")
            validate(name)
    elif verb == "patch":
        kind = stand_in(positional[1:], flags)
        rest = [a for a in args if a not in positional[1:3]]
        print(call([real, *rest, "--local", "-f", kind, "-o", "yaml"], "patch --local"))


def stand_in(positional: list[str], flags: dict[str, list[str]]) -> str:
    """A minimal object of the patched type and name (TYPE NAME or TYPE/NAME) in a temporary file."""
    resource, name = positional[0].split("/", 1) if "/" in positional[0] else positional[:2]
    for aliases, (api_version, kind) in STAND_INS.items():
        if resource.lower() in aliases:
            namespace = (flags.get("-n") or flags.get("--namespace") or ["default"])[-1]
            metadata = {"name": name, "namespace": namespace}
            doc = {"apiVersion": api_version, "kind": kind, "metadata": metadata}
            path = Path(tempfile.mkstemp(suffix=".json")[1])
            path.write_text(json.dumps(doc))
            return str(path)
    raise Failed(f"patch: no offline stand-in for {resource!r} (add it to STAND_INS)")


def validate(name: str) -> None:
    """kubernetes-validate --strict at the chart's Kubernetes floor, when the chart tools are installed."""
    tool = os.environ.get("DOCS_KUBERNETES_VALIDATE", "")
    if tool and Path(tool).exists():
        call([tool, "--strict", "-k", os.environ["DOCS_KUBE_VERSION"], name], "kubernetes-validate")


def helm(real: str, args: list[str]) -> None:
    as_written([real, *args])
    positional, flags = split_args(args, HELM_VALUE_FLAGS)
    verb, state = (positional[0] if positional else ""), Path(os.environ["DOCS_STATE"])
    if verb in ("install", "upgrade"):
        release, chart = positional[1:3]
        call([real, "template", *args[1:]], "helm template, the same arguments")
        values = [x for f in HELM_VALUES for v in flags.get(f, []) for x in (f, v)]
        call([real, "lint", "--strict", chart, *values], "helm lint --strict")
        state.mkdir(parents=True, exist_ok=True)
        (state / f"{release}.json").write_text(json.dumps(args[1:]))
    elif verb == "test":
        release = positional[1]
        record = state / f"{release}.json"
        if not record.exists():
            raise Failed(f"helm test {release}: no `helm install {release} ...` before it in this document")
        rendered = call([real, "template", *json.loads(record.read_text())], "the installed release renders")
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        hooks = {d["metadata"]["name"] for d in docs if "test" in _annotations(d).get("helm.sh/hook", "")}
        wanted = {n for f in flags.get("--filter", []) for n in re.findall(r"(?<!!)name=([\w.-]+)", f)}
        if not hooks or wanted - hooks:
            raise Failed(f"helm test {release}: test hooks {sorted(hooks)}, asked for {sorted(wanted)}")
        print(f"offline: helm test hooks rendered: {sorted(wanted or hooks)}")


def _annotations(doc: dict) -> dict:
    return doc["metadata"].get("annotations") or {}


def main(argv: list[str]) -> int:
    tool, args = argv[0], argv[1:]
    real = os.environ.get(f"DOCS_{tool.upper()}") or shutil.which(tool) or tool
    try:
        (kubectl if tool == "kubectl" else helm)(real, args)
    except Failed as exc:
        print(f"offline: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
