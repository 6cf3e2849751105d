"""relearn's images without Docker: their names everywhere, their release workflow, their environments.

Names. One scheme, ``ghcr.io/<owner>/relearn-<name>:<version>``: what .github/workflows/release.yaml pushes
(owner relearn), what the chart renders (every other image is a pinned upstream one), what skaffold builds
(with ``--default-repo=ghcr.io/relearn``), what ``make images`` builds and what the compiled pipeline runs.

Environments. Each Dockerfile is parsed (the requirement files it installs, its ENV, ENTRYPOINT/CMD, USER
and build ARGs) and its entrypoint runs here, with that ENV, in a venv built from the same requirement files:
- relearn-drift-detector installs requirements/drift.txt and relearn (--no-deps); so is .venv/drift built
  (Makefile): the same file, the same pip.
- the other images install requirements/platform.txt and relearn (--no-deps); .venv/platform holds
  platform.txt + dev.txt + relearn (editable): a superset, not the same set.
test_venv_is_built_from_the_image_requirements proves, per image, that every pin of its requirement files is
installed in the venv at exactly that version (a local label such as torch's ``+cpu`` allowed: the images
install the CPU wheels too), that relearn is this tree, and that the venv holds nothing those files (and, for
.venv/platform, dev.txt) do not bring; test_code_does_not_import_the_dev_packages, that the images' code
imports nothing only dev.txt adds. Neither file pins every transitive dependency: the unpinned ones resolve
when pip installs, in the image as in the venv. What this cannot see: the base image's system libraries, the
read-only root and uid 10001 at run time (USER is compared with the chart's runAsUser, not enforced), and
Docker's build and the registry themselves.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from support.chart import HELM, SCENARIOS, rendered
from support.rollout_stack import CATEGORIES, Pool, make_artifacts
from support.serving_stack import free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "relearn"
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW = yaml.safe_load((WORKFLOWS / "release.yaml").read_text())
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
CHART_BIN = ROOT / ".venv" / "chart" / "bin"
# The venv built from each requirement file an image installs (Makefile: $(PLATFORM)/.ready, $(DRIFT)/.ready),
# and what else that venv installs: .venv/platform adds requirements/dev.txt.
VENVS = {
    # dev.txt (tests, lint) and docs.txt (make docs) go into the platform venv beside the image's pins.
    "requirements/platform.txt": (
        ROOT / ".venv" / "platform",
        ["requirements/dev.txt", "requirements/docs.txt"],
    ),
    "requirements/drift.txt": (ROOT / ".venv" / "drift", []),
}
OWNER = "relearn"  # the project's GitHub owner (Chart.yaml home): its release registry is ghcr.io/relearn
# Images the chart may run that relearn does not build: upstream's, each pinned to a version.
UPSTREAM = {"ghcr.io/mlflow/mlflow", "docker.io/library/postgres", "docker.io/library/redis"}
# The inputs of each pinned action, from its action.yml at the tag beside the pin (actionlint knows only the
# major tags of popular actions, so a misspelt input of a commit-pinned action would pass it).
ACTION_INPUTS = {
    action: set(inputs.split())
    for action, inputs in {
        "actions/checkout": "repository ref token ssh-key persist-credentials path fetch-depth fetch-tags",
        "docker/setup-buildx-action": "version driver driver-opts buildkitd-flags platforms",
        "docker/login-action": "registry username password ecr scope logout",
        "docker/build-push-action": "context file push tags labels build-args platforms provenance sbom "
        "annotations cache-from cache-to target outputs secrets pull no-cache",
        "sigstore/cosign-installer": "cosign-release install-dir use-sudo",
        "anchore/sbom-action": "path file image registry-username registry-password format github-token "
        "artifact-name output-file syft-version dependency-snapshot upload-artifact "
        "upload-artifact-retention upload-release-assets config",
    }.items()
}


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


# ------------------------------------------------------------------------------------------- Dockerfiles
@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, per stage (FROM), continuation lines joined, comments dropped."""

    path: Path
    stages: list[list[tuple[str, str]]]

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        lines, buf = [], ""
        for raw in path.read_text().splitlines():
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            if text.endswith("\\"):
                buf += text[:-1] + " "
                continue
            lines.append(buf + text)
            buf = ""
        stages: list[list[tuple[str, str]]] = []
        for line in lines:
            instruction, _, args = line.partition(" ")
            if instruction.upper() == "FROM":
                stages.append([])
            if stages:
                stages[-1].append((instruction.upper(), args.strip()))
        return cls(path, stages)

    def instructions(self, name: str, stage: int | None = None) -> list[str]:
        stages = self.stages if stage is None else [self.stages[stage]]
        return [args for s in stages for instruction, args in s if instruction == name]

    @property
    def requirement_files(self) -> list[str]:
        """The repository's requirement files that ``pip install -r`` installs (through their COPY)."""
        copied = {}
        for args in self.instructions("COPY"):
            *sources, dest = shlex.split(args)
            if sources[0].startswith("--"):  # COPY --from=<stage>: not from the repository
                continue
            for source in sources:
                if source.startswith("requirements/"):
                    copied[dest] = source
        files = []
        for args in self.instructions("RUN"):
            words = shlex.split(args)
            if "pip" in words and "install" in words:
                for i, word in enumerate(words):
                    if word in ("-r", "--requirement"):
                        assert words[i + 1] in copied, (self.path, words[i + 1], copied)
                        files.append(copied[words[i + 1]])
        return files

    @property
    def env(self) -> dict[str, str]:
        """ENV of the final stage, in order (later keys win)."""
        env: dict[str, str] = {}
        for args in self.instructions("ENV", stage=-1):
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                env[key] = value
        return env

    @property
    def command(self) -> list[str]:
        """ENTRYPOINT + CMD of the final stage (exec form)."""
        entry = self.instructions("ENTRYPOINT", stage=-1)
        cmd = self.instructions("CMD", stage=-1)
        return [*(json.loads(entry[-1]) if entry else []), *(json.loads(cmd[-1]) if cmd else [])]

    @property
    def user(self) -> str | None:
        users = self.instructions("USER", stage=-1)
        return users[-1] if users else None

    @property
    def args(self) -> dict[str, str]:
        """Build ARGs and their defaults."""
        out = {}
        for args in self.instructions("ARG"):
            name, _, default = args.partition("=")
            out[name] = default.strip('"')
        return out

    @property
    def venv(self) -> Path:
        """The venv built from exactly the requirement files this image installs."""
        (req,) = set(self.requirement_files)
        return VENVS[req][0]

    def process_env(self, home: Path, **overrides: str) -> dict[str, str]:
        """The image's ENV as this machine's process environment: /opt/venv is the venv, HOME a temp dir."""
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
        for key, value in self.env.items():
            value = value.replace("/opt/venv", str(self.venv))
            env[key] = value.replace("${PATH}", env["PATH"]).replace("$PATH", env["PATH"])
        return {**env, **overrides}

    def entrypoint(self, env: dict[str, str]) -> list[str]:
        """ENTRYPOINT + CMD with the program resolved through the image's PATH (the venv's python)."""
        program, *rest = self.command
        resolved = shutil.which(program, path=env["PATH"])
        assert resolved and Path(resolved).parent == self.venv / "bin", (self.path, resolved)
        return [resolved, *rest]


# -------------------------------------------------------------------------------------- release workflow
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def expand(text: str, context: dict[str, str]) -> str:
    """Replace the workflow's ``${{ … }}`` expressions; an expression not in ``context`` fails."""

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in context, f"unexpected expression {match.group(0)} in {text!r}"
        return context[match.group(1)]

    return EXPRESSION.sub(value, text)


def version_step(tmp: Path, ref: str, owner: str = OWNER) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the version job's check as GitHub would (bash -eo pipefail, GITHUB_* env); returns its outputs."""
    (step,) = [s for s in WORKFLOW["jobs"]["version"]["steps"] if s.get("id") == "check"]
    script, outputs = tmp / "check.sh", tmp / "github_output"
    script.write_text(step["run"])
    outputs.write_text("")
    env = {
        "PATH": "/usr/bin:/bin",
        "GITHUB_REF": ref,
        "GITHUB_REF_NAME": ref.rsplit("/", 1)[-1],
        "GITHUB_REPOSITORY_OWNER": owner,
        "GITHUB_OUTPUT": str(outputs),
    }
    proc = _run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=ROOT, env=env)
    return proc, dict(line.split("=", 1) for line in outputs.read_text().splitlines())


@dataclass(frozen=True)
class Release:
    """One image the release workflow builds: where it is pushed, from which Dockerfile, with which args."""

    name: str  # relearn-<name>
    repository: str
    tag: str
    dockerfile: str
    build_args: dict[str, str]


def released_images(tmp: Path) -> dict[str, Release]:
    """The workflow's images for a tag v<appVersion> by owner relearn, its expressions evaluated."""
    proc, outputs = version_step(tmp, f"refs/tags/v{CHART_META['appVersion']}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = WORKFLOW["jobs"]["images"]
    (build,) = [s for s in job["steps"] if s.get("id") == "build"]
    out = {}
    for entry in job["strategy"]["matrix"]["include"]:
        context = {f"needs.version.outputs.{k}": v for k, v in outputs.items()}
        context |= {f"matrix.{k}": v for k, v in entry.items()}
        context |= {f"env.{k}": v for k, v in WORKFLOW["env"].items()}
        context |= {f"env.{k}": expand(str(v), context) for k, v in job["env"].items()}
        (ref,) = expand(build["with"]["tags"], context).split()
        args = expand(build["with"]["build-args"], context)
        repository, _, tag = ref.rpartition(":")
        out[entry["image"]] = Release(
            entry["image"],
            repository,
            tag,
            expand(build["with"]["file"], context),
            dict(line.split("=", 1) for line in args.splitlines() if line.strip()),
        )
    return out


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Release]:
    return released_images(tmp_path_factory.mktemp("release"))


IMAGES = {e["image"]: e["dockerfile"] for e in WORKFLOW["jobs"]["images"]["strategy"]["matrix"]["include"]}


def dockerfile(image: str) -> Dockerfile:
    return Dockerfile.parse(ROOT / IMAGES[image])


# ------------------------------------------------------------------------------------------------- tests
def test_actionlint_every_workflow() -> None:
    """actionlint (with shellcheck on the run: scripts) passes on every workflow."""
    actionlint, shellcheck = CHART_BIN / "actionlint", CHART_BIN / "shellcheck"
    if not actionlint.exists() or not shellcheck.exists():
        pytest.skip("actionlint/shellcheck missing: `make setup` installs requirements/chart.txt")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert files
    cmd = [str(actionlint), "-no-color", "-oneline", "-shellcheck", str(shellcheck), "-pyflakes", "", *files]
    out = _run(cmd, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_release_version_must_match_the_chart_and_pyproject(tmp_path: Path) -> None:
    """The version job's own script: the tag's version is the chart's (app)version and pyproject.toml's."""
    version = CHART_META["appVersion"]
    with (ROOT / "pyproject.toml").open("rb") as f:
        assert tomllib.load(f)["project"]["version"] == version == CHART_META["version"]
    proc, outputs = version_step(tmp_path, f"refs/tags/v{version}", owner="ReLearn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert outputs == {"version": version, "registry": "ghcr.io/relearn"}  # GHCR names are lower case
    proc, outputs = version_step(tmp_path, "refs/tags/v99.0.0")
    assert proc.returncode != 0 and not outputs
    for what in ("appVersion", "the chart's version", "pyproject.toml"):
        assert what in proc.stdout, proc.stdout
    proc, outputs = version_step(tmp_path, "refs/heads/main")  # workflow_dispatch on a branch
    assert proc.returncode != 0 and "v* tag" in proc.stdout and not outputs


def test_release_workflow_pins_signs_and_keeps_permissions_minimal() -> None:
    assert WORKFLOW.get("on", WORKFLOW.get(True)) == {"push": {"tags": ["v*"]}, "workflow_dispatch": None}
    assert WORKFLOW["permissions"] == {}
    writes = {}
    for name, job in WORKFLOW["jobs"].items():
        assert "permissions" in job, name
        writes[name] = {k for k, v in job["permissions"].items() if v == "write"}
        assert set(job["permissions"]) <= {"contents", "packages", "id-token"}, name
        for step in job["steps"]:
            if "uses" in step:
                action = step["uses"].split("@")[0]
                assert set(step.get("with", {})) <= ACTION_INPUTS[action], step
    assert writes == {"version": set(), "images": {"packages", "id-token"}, "chart": {"packages", "id-token"}}
    # Every action pinned by commit, its version tag beside it.
    uses = re.findall(r"uses: (\S+)(.*)", (WORKFLOWS / "release.yaml").read_text())
    assert uses
    for ref, comment in uses:
        assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", ref), ref
        assert re.fullmatch(r" # v\d+\.\d+\.\d+", comment), (ref, comment)
    # Each image: pushed, signed by digest, its SBOM made from the pushed digest and attested on it.
    steps = WORKFLOW["jobs"]["images"]["steps"]
    by_uses = {s["uses"].split("@")[0]: s for s in steps if "uses" in s}
    runs = [s for s in steps if "run" in s]
    digest = "${{ steps.build.outputs.digest }}"
    assert by_uses["docker/build-push-action"]["with"]["push"] is True
    assert by_uses["anchore/sbom-action"]["with"]["image"] == "${{ env.IMAGE }}@" + digest
    sbom = by_uses["anchore/sbom-action"]["with"]["output-file"]
    assert [(s["run"], s["env"]["DIGEST"]) for s in runs] == [
        ('cosign sign --yes "$IMAGE@$DIGEST"', digest),
        (f'cosign attest --yes --type spdxjson --predicate {sbom} "$IMAGE@$DIGEST"', digest),
    ]
    # The chart: pushed as an OCI artifact and signed by the digest the push printed.
    chart = WORKFLOW["jobs"]["chart"]
    assert chart["needs"] == ["version", "images"]
    push = next(s for s in chart["steps"] if s.get("id") == "push")["run"]
    assert 'helm push "dist/relearn-$VERSION.tgz" "oci://$IMAGE_REGISTRY/charts"' in push
    sign = chart["steps"][-1]
    assert sign["run"] == 'cosign sign --yes "$IMAGE_REGISTRY/charts/relearn@$DIGEST"'
    assert sign["env"]["DIGEST"] == "${{ steps.push.outputs.digest }}"


def test_release_builds_every_image_with_cpu_torch_and_the_pipeline_it_pushes(releases) -> None:
    dockerfiles = {str(p.relative_to(ROOT)) for p in ROOT.glob("**/Dockerfile") if ".venv" not in p.parts}
    assert {r.dockerfile for r in releases.values()} == dockerfiles
    pipeline = releases["relearn-pipeline"]
    for release in releases.values():
        assert release.repository == f"ghcr.io/{OWNER}/{release.name}"
        assert release.tag == CHART_META["appVersion"]
        assert release.build_args == {
            "PIP_EXTRA_INDEX_URL": "https://download.pytorch.org/whl/cpu",
            "RELEARN_PIPELINE_IMAGE": f"{pipeline.repository}:{pipeline.tag}",
        }
        # Every ARG the Dockerfile declares is set by the release (the CPU index, the pipeline image).
        assert set(Dockerfile.parse(ROOT / release.dockerfile).args) <= set(release.build_args), release


def _container_images(obj: Any) -> list[str]:
    """Every container image of a rendered object (pods, workloads, InferenceService components, jobs)."""
    if isinstance(obj, list):
        return [image for item in obj for image in _container_images(item)]
    if not isinstance(obj, dict):
        return []
    found = []
    for key, value in obj.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            found += [c["image"] for c in value if isinstance(c, dict) and "image" in c]
        found += _container_images(value)
    return found


@pytest.mark.skipif(HELM is None, reason="helm missing: run .ci/install-tools.sh")
def test_chart_runs_released_images_or_pinned_upstream_ones(releases) -> None:
    """Every image a scenario renders is one the workflow pushes (same name, release tag) or upstream's."""
    released = {f"{r.repository}:{r.tag}" for r in releases.values()}
    seen = set()
    for scenario in SCENARIOS:
        for image in _container_images(rendered(scenario)):
            seen.add(image)
            repository, _, tag = image.rpartition(":")
            pinned_upstream = repository in UPSTREAM and tag not in ("", "latest")
            assert image in released or pinned_upstream, f"{scenario}: {image}"
    assert released <= seen, released - seen  # and the chart runs every image the workflow pushes
    platform = (ROOT / "requirements" / "platform.txt").read_text()
    (mlflow,) = re.findall(r"^mlflow==(\S+)$", platform, re.M)
    assert f"ghcr.io/mlflow/mlflow:v{mlflow}-full" in seen  # the variant with psycopg2 and boto3


def test_skaffold_builds_the_released_images(releases) -> None:
    """skaffold's artifacts, prefixed with --default-repo=ghcr.io/relearn, are the workflow's images."""
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert {f"ghcr.io/{OWNER}/{name}": a["docker"]["dockerfile"] for name, a in artifacts.items()} == {
        r.repository: r.dockerfile for r in releases.values()
    }
    templates = config["deploy"]["helm"]["releases"][0]["setValueTemplates"]
    for key, template in templates.items():
        _, value, field = key.split(".")
        if field == "repository":  # skaffold's template key: the artifact name with - as _
            (artifact,) = re.findall(r"IMAGE_REPO_(\w+)", template)
            name = next(a for a in artifacts if a.replace("-", "_") == artifact)
            assert VALUES["images"][value]["repository"] == f"ghcr.io/{OWNER}/{name}", key
    for name, artifact in artifacts.items():
        declared = Dockerfile.parse(ROOT / artifact["docker"]["dockerfile"]).args
        expected = {"PIP_EXTRA_INDEX_URL": releases[name].build_args["PIP_EXTRA_INDEX_URL"]}
        assert artifact["docker"].get("buildArgs", {}) == (
            expected if "PIP_EXTRA_INDEX_URL" in declared else {}
        )


def _fake_docker(tmp: Path, info_rc: int) -> tuple[Path, Path]:
    bindir, log = tmp / f"bin{info_rc}", tmp / f"docker{info_rc}.log"
    bindir.mkdir()
    (bindir / "docker").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nif [ "$1" = info ]; then exit {info_rc}; fi\nexit 0\n'
    )
    (bindir / "docker").chmod(0o755)
    return bindir, log


def test_make_images_builds_the_released_images(tmp_path: Path, releases) -> None:
    """`make images` with a stand-in docker: one `docker build` per image, the workflow's names and args."""
    bindir, log = _fake_docker(tmp_path, info_rc=0)
    out = _run(["make", "-s", "images"], cwd=ROOT, env={"PATH": f"{bindir}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    builds = {}
    for line in log.read_text().splitlines():
        words = shlex.split(line)
        if words[0] == "build":
            args = dict(w.split("=", 1) for a, w in itertools.pairwise(words) if a == "--build-arg")
            builds[words[words.index("-t") + 1]] = (words[words.index("-f") + 1], args, words[-1])
    assert log.read_text().splitlines()[0] == "info"
    assert builds == {f"{r.repository}:{r.tag}": (r.dockerfile, r.build_args, ".") for r in releases.values()}


def test_make_images_without_a_docker_engine_says_so(tmp_path: Path) -> None:
    bindir, _ = _fake_docker(tmp_path, info_rc=1)
    out = _run(["make", "-s", "images"], cwd=ROOT, env={"PATH": f"{bindir}:/usr/bin:/bin"})
    assert out.returncode != 0
    (message,) = [line for line in out.stderr.splitlines() if line.startswith("make images:")]
    assert "no Docker engine answers" in message
    if shutil.which("docker", path="/usr/bin:/bin") is None:
        out = _run(["make", "-s", "images"], cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
        assert out.returncode != 0 and "make images: no docker command" in out.stderr


VENV_CHECK = """
import importlib.metadata as md, json, sys
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def pins(paths):
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.split("#")[0].strip():
                yield Requirement(line.split("#")[0].strip())


image_files, venv_files = json.loads(sys.argv[1]), json.loads(sys.argv[2])
installed = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions()}
wrong = []
for req in pins(image_files):  # every pin of the image, at exactly that version
    (spec,) = req.specifier
    dist = installed.get(canonicalize_name(req.name))
    if spec.operator != "==" or dist is None or Version(dist.version).public != Version(spec.version).public:
        wrong.append([str(req), dist and dist.version])
# and nothing that neither the image's files nor the venv's other files bring (their dependency closure)
todo = [(canonicalize_name(r.name), frozenset(r.extras)) for r in pins(image_files + venv_files)]
seen = set()
while todo:
    name, extras = todo.pop()
    if (name, extras) in seen or name not in installed:
        continue
    seen.add((name, extras))
    for spec in installed[name].requires or []:
        req = Requirement(spec)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
unexplained = sorted(set(installed) - {n for n, _ in seen} - {"relearn", "pip", "setuptools", "wheel"})
import relearn
print(json.dumps({"wrong": wrong, "unexplained": unexplained, "relearn": md.version("relearn"),
                  "path": relearn.__file__}))
"""


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_venv_is_built_from_the_image_requirements(image: str) -> None:
    """The venv has every pin of the Dockerfile's requirement files at that version, relearn from this tree,
    and no package those files (or, for .venv/platform, dev.txt) do not bring: a package installed into the
    venv by hand would let a test pass that the image fails."""
    df = dockerfile(image)
    (req,) = set(df.requirement_files)
    venv, venv_files = VENVS[req]
    image_files = json.dumps([str(ROOT / f) for f in df.requirement_files])
    venv_files = json.dumps([str(ROOT / f) for f in venv_files])
    out = _run([str(venv / "bin" / "python"), "-c", VENV_CHECK, image_files, venv_files])
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["wrong"] == [], f"{venv} lacks pins of {req} (pin, installed): {result['wrong']}"
    assert result["unexplained"] == [], f"{venv} holds what {req} does not install: {result['unexplained']}"
    with (ROOT / "pyproject.toml").open("rb") as f:
        assert result["relearn"] == tomllib.load(f)["project"]["version"]
    assert Path(result["path"]).is_relative_to(ROOT / "src")  # relearn of this tree, as the image copies it


def test_code_does_not_import_the_dev_packages() -> None:
    """What dev.txt adds to .venv/platform (pytest, ruff, jsonschema…) is not imported by the images' code."""
    dev = {"pytest", "_pytest", "ruff", "iniconfig", "pluggy", "jsonschema", "referencing", "rpds"}
    for folder in ("src", "components", "pipelines"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                assert not {n.split(".")[0] for n in names} & dev, (path, names)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_entrypoint_help_with_the_image_env(image: str, tmp_path: Path) -> None:
    """ENTRYPOINT (+ CMD) with the Dockerfile's ENV answers --help; the image runs as the chart's uid."""
    df = dockerfile(image)
    env = df.process_env(tmp_path)
    cmd = df.entrypoint(env)
    if cmd[1:] == []:  # the pipeline image's bare `python`: KFP gives the program; ours is the compiler
        cmd += ["-m", "pipelines.compile"]
    out = _run([*cmd, "--help"], env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "usage:" in out.stdout.lower(), out.stdout
    assert df.user == str(VALUES["podSecurityContext"]["runAsUser"]), (df.path, df.user)


def _executors(out: Path) -> dict[str, Any]:
    """The executors of every compiled pipeline (training, recalibration), named ``<pipeline>:<executor>``
    (each file's first YAML document; a platform spec may follow)."""
    paths = sorted(out.glob("*.yaml"))
    assert {p.stem for p in paths} == {"relearn-train", "relearn-recalibrate"}, paths
    executors = {}
    for path in paths:
        spec = next(yaml.safe_load_all(path.read_text()))
        executors |= {f"{path.stem}:{k}": v for k, v in spec["deploymentSpec"]["executors"].items()}
    return executors


def _compiled_images(out: Path) -> set[str]:
    return {e["container"]["image"] for e in _executors(out).values()}


def _compile_runs(image: str) -> list[str]:
    return [
        run for run in dockerfile(image).instructions("RUN") if run.startswith("python -m pipelines.compile")
    ]


@pytest.mark.parametrize("image", [image for image in sorted(IMAGES) if _compile_runs(image)])
def test_images_compile_the_pipeline_onto_the_released_pipeline_image(image: str, tmp_path: Path, releases):
    """The build's `RUN python -m pipelines.compile` in the image's venv, with the workflow's build arg and
    with the Dockerfile's default: every step runs the released pipeline image, the one the chart names."""
    df = dockerfile(image)
    (run,) = _compile_runs(image)
    pipeline = releases["relearn-pipeline"]
    chart_image = f"{VALUES['images']['pipeline']['repository']}:{CHART_META['appVersion']}"
    assert f"{pipeline.repository}:{pipeline.tag}" == chart_image
    for i, arg in enumerate(
        (releases[image].build_args["RELEARN_PIPELINE_IMAGE"], df.args["RELEARN_PIPELINE_IMAGE"])
    ):
        env = df.process_env(tmp_path, RELEARN_PIPELINE_IMAGE=arg)
        program, *words = shlex.split(run)
        words[words.index("--out") + 1] = str(tmp_path / f"out{i}")
        proc = _run([shutil.which(program, path=env["PATH"]), *words], env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert _compiled_images(tmp_path / f"out{i}") == {chart_image}, arg


STEP_IMPORTS = """
import ast, inspect, sys, textwrap
namespace = {}
exec(sys.argv[1], namespace)  # what the component functions import when their pod starts
lazy = set()
for name in sys.argv[2:]:  # the step functions they call, whose own imports are deferred into their bodies
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(eval(name, namespace))))):
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and not node.level):
            lazy.add(ast.unparse(node))
exec("\\n".join(sorted(lazy)), {})
print(len(lazy))
"""


def test_pipeline_steps_import_in_the_pipeline_image(tmp_path: Path) -> None:
    """Each compiled step's imports, and those its step function defers into its body, work in the image."""
    df = dockerfile("relearn-pipeline")
    env = df.process_env(tmp_path)
    python = df.entrypoint(env)[0]
    proc = _run([python, "-m", "pipelines.compile", "--out", str(tmp_path)], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    imports, called = set(), set()
    for executor in _executors(tmp_path).values():
        for node in ast.walk(ast.parse(executor["container"]["command"][-1])):
            if isinstance(node, ast.Import | ast.ImportFrom):
                imports.add(ast.unparse(node))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("relearn."):
                called |= {alias.asname or alias.name for alias in node.names}
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "steps"
            ):
                called.add(f"steps.{node.attr}")
    assert "steps.train" in called and "from relearn import steps" in imports, (called, imports)
    proc = _run(
        [python, "-c", STEP_IMPORTS, "\n".join(sorted(imports)), *sorted(called)], env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) > 0  # the deferred imports were found, and they import


def run_in_image(
    image: str, tmp: Path, code: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in the image's environment (its venv, its ENV, ``env`` on top)."""
    df = dockerfile(image)
    process_env = df.process_env(tmp, **env)
    python = shutil.which("python", path=process_env["PATH"])
    return _run([python, "-c", code, *args], env=process_env, cwd=tmp)


# The servers themselves start in tests/serving/test_serving.py, test_rollout_e2e.py and tests/drift (same
# venvs): the smokes here are the cheap part each image must get right: its entrypoint module and model code
# import, and the model, feature store or reference it serves from loads.
def test_predictor_image_loads_and_scores_a_model(tmp_path: Path) -> None:
    artifact = make_artifacts(tmp_path / "models")["1"]
    code = """
import json, sys
import numpy as np
import relearn.serving.predictor  # the entrypoint module
from relearn.serving.config import PredictorSettings
from relearn.serving.predictor_model import FraudPredictor

model = FraudPredictor(PredictorSettings(model_uri=sys.argv[1]))
assert model.load()
categorical = np.array([json.loads(sys.argv[2])] * 2, dtype=object)
print(json.dumps(model.score_arrays(np.ones((2, 17), np.float32), categorical).tolist()))
"""
    out = run_in_image("relearn-predictor", tmp_path, code, str(artifact), json.dumps(CATEGORIES))
    assert out.returncode == 0, out.stdout + out.stderr
    scores = json.loads(out.stdout.splitlines()[-1])
    assert len(scores) == 2 and all(0.0 <= x <= 1.0 for x in scores)


def test_transformer_image_opens_the_feature_store(tmp_path: Path) -> None:
    """The transformer's model loads: it opens the Feast store (registry applied, as the pipeline does)."""
    code = """
import relearn.serving.transformer  # the entrypoint module
from relearn.features.store import apply, get_store
from relearn.serving.config import TransformerSettings
from relearn.serving.transformer_model import FraudTransformer
from relearn.settings import RelearnSettings

settings = RelearnSettings()
apply(get_store(settings), settings)
transformer = FraudTransformer(TransformerSettings(predictor_host="127.0.0.1:1"))
assert transformer.load() and transformer.ready
print("ready")
"""
    out = run_in_image("relearn-transformer", tmp_path, code, RELEARN_HOME=str(tmp_path / "home"))
    assert out.returncode == 0 and out.stdout.split()[-1] == "ready", out.stdout + out.stderr


def test_drift_detector_image_starts_and_loads_a_reference(tmp_path: Path) -> None:
    """The detector's entrypoint with its image's ENV (a free port, a temp data dir) becomes ready."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=200)  # any reference sample will do: readiness, not drift
    reference = Pool(rng.uniform(0, 3, size=(200, 17)).astype(np.float32), scores, scores > 0.95)
    df, port = dockerfile("relearn-drift-detector"), free_port()
    env = df.process_env(
        tmp_path,
        RELEARN_DRIFT_HOST="127.0.0.1",
        RELEARN_DRIFT_PORT=str(port),
        RELEARN_DRIFT_DATA_DIR=str(tmp_path / "data"),
        RELEARN_DRIFT_REFERENCE_PATH=str(reference.reference(tmp_path / "reference.parquet")),
    )
    log_path = tmp_path / "detector.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            df.entrypoint(env), env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
        try:

            def ready() -> bool:
                return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200

            wait_until("drift detector", ready, process, log_path, 90, errors=(httpx.HTTPError,))
        finally:
            stop_process(process)


def test_rollout_image_runs_an_iteration_and_has_the_kubectl_plugin(tmp_path: Path) -> None:
    """The controller runs one iteration (Prometheus unreachable: it holds); kubectl-relearn answers."""
    df = dockerfile("relearn-rollout")
    env = df.process_env(tmp_path, RELEARN_HOME=str(tmp_path / "home"))
    cmd = df.entrypoint(env)
    args = ["--once", "--backend", "local", "--state", str(tmp_path / "state.json")]
    args += [
        "--prometheus-url",
        f"http://127.0.0.1:{free_port()}",
        "--audit-log",
        str(tmp_path / "audit.jsonl"),
    ]
    out = _run([*cmd, *args], env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    plugin = shutil.which("kubectl-relearn", path=env["PATH"])  # the console script the image installs
    assert plugin, env["PATH"]
    out = _run([plugin, "--help"], env=env, cwd=tmp_path)
    assert out.returncode == 0 and "usage: kubectl relearn" in out.stdout, out.stdout + out.stderr
