"""The cluster configs are what Ray and KubeRay accept, and the documented job commands fit them.

Everything runs offline through Ray's own code: the cluster-launcher validator
(`prepare_config` + `validate_config`), the AWS provider's resource autodetection (fed the
instance specs below instead of an EC2 call), KubeRay's RayCluster-to-autoscaler translation,
and the autoscaler's node planner (`get_nodes_for`). A guard fails any test that opens a network
connection.

The job commands come from docs/cluster.md (and a "Run on a cluster" section of README.md, if it has one).
The Serve config (cluster/serve.yaml, and the RayService that carries it) goes through Ray Serve's own schema
and the app's own settings check (ServeOptions), and its replicas through the same planner as the jobs.
"""

import copy
import functools
import importlib
import math
import re
import shlex
import socket
import sys
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from ray.autoscaler._private.aws import node_provider as aws_node_provider
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

from ray_jobs.serve.options import TOKEN_ENV, ServeOptions
from tests.pins import read_pins

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
AWS_YAML = ROOT / "cluster" / "aws.yaml"
KUBERAY = ROOT / "cluster" / "kuberay"
RAYJOBS = {"ray_jobs.train": KUBERAY / "rayjob-train.yaml", "ray_jobs.inpaint": KUBERAY / "rayjob-inpaint.yaml"}
SERVE_YAML = ROOT / "cluster" / "serve.yaml"
RAYSERVICE = KUBERAY / "rayservice.yaml"
# What rayservice.yaml's rayClusterConfig adds to raycluster.yaml's spec: the port KubeRay's serve service
# targets, on the head, and the app's token from a Secret, on every container (the builder may run anywhere).
SERVE_PORT = {"containerPort": 8000, "name": "serve"}
TOKEN_FROM_SECRET = {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": "onade-serve", "key": "token"}}}
# Where each job's workers must land, on AWS and on KubeRay alike.
JOB_NODE_TYPE = {"ray_jobs.train": "gpu-train", "ray_jobs.inpaint": "gpu-inpaint"}
SERVE_NODE_TYPE = "gpu-inpaint"  # Serve replicas share the inpainting job's GPU nodes
CPU_NODE_TYPE = "cpu-worker"
IMAGE = f"rayproject/ray:{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}-gpu"
# The exact versions the suite runs with; the nodes install these (tests/test_install.py checks this venv).
PINS = read_pins(ROOT / "constraints.txt")
# What ScalingConfig(accelerator_type=...) and map_batches(accelerator_type=...) add to each request.
ACCELERATOR_SLIVER = 0.001

# EC2 facts about the instance types aws.yaml uses, in DescribeInstanceTypes form: vCPUs, MiB,
# (GPU name, count). They let Ray's AWS resource autodetection run here without calling EC2.
# Using a new instance type in aws.yaml means adding its row.
EC2_SPECS = {
    "m5.2xlarge": (8, 32768, None),
    "m5.4xlarge": (16, 65536, None),
    "p4d.24xlarge": (96, 1179648, ("A100", 8)),
    "g5.2xlarge": (8, 32768, ("A10G", 1)),
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"test_cluster must stay offline, but something tried to connect: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_network_guard_is_armed():
    with pytest.raises(AssertionError, match="offline"):
        socket.create_connection(("127.0.0.1", 9))


# ---------------------------------------------------------------- loading the configs


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def validated_aws_config(text: str | None = None) -> dict:
    config = prepare_config(yaml.safe_load(text if text is not None else AWS_YAML.read_text()))
    validate_config(config)
    return config


def ec2_describe(instance_type: str) -> dict:
    if instance_type not in EC2_SPECS:
        raise AssertionError(f"cluster/aws.yaml uses {instance_type}: add its vCPUs, memory and GPUs to EC2_SPECS")
    vcpus, mib, gpu = EC2_SPECS[instance_type]
    described = {"InstanceType": instance_type, "VCpuInfo": {"DefaultVCpus": vcpus}, "MemoryInfo": {"SizeInMiB": mib}}
    if gpu:
        described["GpuInfo"] = {"Gpus": [{"Name": gpu[0], "Manufacturer": "NVIDIA", "Count": gpu[1]}]}
    return described


def aws_runtime_config(config: dict, monkeypatch) -> dict:
    """The config as the autoscaler on the head sees it: declared resources plus what Ray detects."""
    types = {t["node_config"]["InstanceType"] for t in config["available_node_types"].values()}
    described = [ec2_describe(t) for t in sorted(types)]
    monkeypatch.setattr(aws_node_provider, "list_ec2_instances", lambda region, credentials=None: described)
    return aws_node_provider.AWSNodeProvider.fillout_available_node_types_resources(config)


def kuberay_autoscaling_config(name: str, spec: dict) -> dict:
    """What KubeRay's in-tree autoscaler derives from a RayCluster (it validates the result itself)."""
    derived = _derive_autoscaling_config_from_ray_cr({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
    prepared = prepare_config(derived)
    validate_config(prepared)
    return prepared


# ---------------------------------------------------------------- the job commands in the docs


def section(markdown: str, title: str) -> str | None:
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if m and m.group(2) == title:
            level = len(m.group(1))
            end = next((j for j in range(i + 1, len(lines))
                        if re.match(rf"^#{{1,{level}}}\s", lines[j])), len(lines))
            return "\n".join(lines[i:end])
    return None


def doc_sources() -> list[tuple[str, str]]:
    sources = []
    readme = ROOT / "README.md"
    if readme.exists() and (text := section(readme.read_text(), "Run on a cluster")):
        sources.append(("README.md", text))
    page = ROOT / "docs" / "cluster.md"
    if page.exists():
        sources.append(("docs/cluster.md", page.read_text()))
    return sources


def job_commands(markdown: str) -> list[tuple[str, list[str]]]:
    """(module, args) for every `python -m ray_jobs.train|inpaint ...` in the fenced code blocks."""
    commands = []
    for block in re.findall(r"```[^\n`]*\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "ray_jobs." not in line:
                continue  # other commands may quote across lines (the IAM policy)
            tokens = shlex.split(line, comments=True)
            for i in range(len(tokens) - 2):
                if tokens[i].startswith("python") and tokens[i + 1] == "-m" and tokens[i + 2] in JOB_NODE_TYPE:
                    args = tokens[i + 3:]
                    cut = [k for k, t in enumerate(args) if t in {"&&", "||", "|", ";", "&"}]
                    commands.append((tokens[i + 2], args[: cut[0]] if cut else args))
    return commands


def all_doc_commands() -> list[tuple[str, str, list[str]]]:
    return [(where, module, args) for where, text in doc_sources() for module, args in job_commands(text)]


def worker_request(module: str, args: list[str]) -> tuple[int, dict]:
    """How many workers the command starts and what each asks Ray for."""
    def value(flag, default=None):
        if flag in args:
            return args[args.index(flag) + 1]
        if default is None:
            raise AssertionError(f"`python -m {module}` in the cluster docs must state {flag} so the docs show "
                                 f"what the autoscaler will be asked for: {' '.join(args)}")
        return default

    # The jobs ask for one CPU per worker unless told otherwise (Ray Data's actor default; the
    # training job's --cpus-per-worker default).
    bundle = {"CPU": float(value("--cpus-per-worker", "1")), "GPU": float(value("--gpus-per-worker"))}
    accelerator = value("--accelerator-type", "")
    if accelerator:
        bundle[f"accelerator_type:{accelerator}"] = ACCELERATOR_SLIVER
    return int(value("--workers")), {k: v for k, v in bundle.items() if v > 0}


def per_node(node_resources: dict, bundle: dict) -> int:
    return min(math.floor(node_resources.get(k, 0) / v + 1e-9) for k, v in bundle.items())


def plan(config: dict, demands: list[dict]) -> tuple[dict, list]:
    """The node types Ray's autoscaler would add for these pending requests, and what stays unplaced."""
    scorer = functools.partial(_default_utilization_scorer,
                               node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
    head = config["head_node_type"]
    to_add, residual = get_nodes_for(config["available_node_types"], {head: 1}, head,
                                     config["max_workers"], demands, scorer)
    return dict(to_add), residual


def check_command_fits(config: dict, where: str, module: str, args: list[str]) -> None:
    """The command's workers fit its node type, and the autoscaler adds that type and no other."""
    num_workers, bundle = worker_request(module, args)
    # Ray Data's read tasks need CPUs next to the workers (they hang when none is free).
    check_fits(config, where, f"`python -m {module}`", num_workers, bundle, JOB_NODE_TYPE[module], spare_cpus=1)


def check_fits(config: dict, where: str, what: str, count: int, bundle: dict, expected: str,
               spare_cpus: float = 0) -> None:
    """`count` requests of `bundle` fit node type `expected`, within its max_workers, with `spare_cpus` left on a
    full node, and the autoscaler adds that type and no other."""
    node_types = config["available_node_types"]
    workers = {name: t for name, t in node_types.items() if name != config["head_node_type"]}
    holders = [name for name, t in workers.items() if per_node(t["resources"], bundle) >= 1]
    assert holders, (f"{where}: {what} asks {bundle} per worker, more than any node type offers: "
                     + ", ".join(f"{n} {t['resources']}" for n, t in workers.items()))

    target = node_types[expected]
    fit = per_node(target["resources"], bundle)
    assert fit >= 1, f"{where}: {what} asks {bundle} per worker; {expected} offers {target['resources']}"
    needed = math.ceil(count / fit)
    assert needed <= target["max_workers"], (
        f"{where}: {count} workers of {what} need {needed} {expected} nodes "
        f"({fit} per node) but max_workers is {target['max_workers']}: the job would wait forever")
    spare = target["resources"].get("CPU", 0) - fit * bundle.get("CPU", 0)
    assert spare >= spare_cpus, f"{where}: a full {expected} node leaves {spare} CPUs, fewer than {spare_cpus}"

    to_add, residual = plan(config, [dict(bundle) for _ in range(count)])
    assert not residual, f"{where}: the autoscaler cannot place {residual} for {what}"
    assert to_add == {expected: needed}, (
        f"{where}: for {what} the autoscaler would add {to_add}, not {needed} x {expected}")


# ---------------------------------------------------------------- AWS


def test_aws_yaml_passes_rays_validator():
    config = validated_aws_config()
    assert config["docker"]["image"] == IMAGE, "the image must match the Ray and Python versions we pin"
    assert any("pip install" in c and "[jobs]" in c for c in config["setup_commands"]), "nodes must install onade"


def test_the_ray_we_pin_is_the_ray_of_the_images():
    assert PINS["ray"] == ray.__version__, "constraints.txt pins another Ray than this venv runs"
    assert IMAGE.startswith(f"rayproject/ray:{PINS['ray']}-")


def test_aws_nodes_install_with_the_constraints():
    """Every pip install in setup_commands goes through the synced repository's constraints.txt."""
    config = validated_aws_config()
    (mount,) = [node for node, local in config["file_mounts"].items() if local.rstrip("/") == "."]
    installs = [shlex.split(c) for c in config["setup_commands"] if "pip install" in c]
    assert installs, "nodes must install onade"
    for tokens in installs:
        assert f"{mount}/constraints.txt" in [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "-c"], (
            f"cluster/aws.yaml: `{' '.join(tokens)}` must install with -c {mount}/constraints.txt")


def test_aws_head_takes_no_work_and_workers_scale_from_zero():
    config = validated_aws_config()
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert types[head]["resources"] == {"CPU": 0}
    assert "GPU" not in types[head]["resources"]
    workers = {n: t for n, t in types.items() if n != head}
    assert set(JOB_NODE_TYPE.values()) | {CPU_NODE_TYPE} <= set(workers)
    for name, t in workers.items():
        assert t["min_workers"] == 0, f"{name} must scale from zero"
        assert 1 <= t["max_workers"] <= config["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    assert types["gpu-train"]["resources"]["GPU"] == 8, "training nodes have 8 GPUs"
    assert 0 < types["gpu-inpaint"]["resources"]["GPU"] < 8, "inpainting uses a smaller GPU node"
    assert 1 <= config["idle_timeout_minutes"] <= 30
    assert config["provider"]["cache_stopped_nodes"] is False


def test_aws_dashboard_is_reachable_only_through_the_ssh_tunnel():
    config = validated_aws_config()
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in start
    # Without extra rules the security group Ray creates admits SSH alone from outside.
    assert not config["provider"].get("security_group", {}).get("IpPermissions")
    for name, t in config["available_node_types"].items():
        assert "SecurityGroupIds" not in t["node_config"], f"{name}: a custom security group might open 8265"


def test_aws_declared_resources_are_what_ray_detects(monkeypatch):
    config = validated_aws_config()
    bare = copy.deepcopy(config)
    for t in bare["available_node_types"].values():
        t["resources"] = {}
    detected = aws_runtime_config(bare, monkeypatch)["available_node_types"]
    for name, t in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue  # CPU 0 on purpose
        found = {k: v for k, v in detected[name]["resources"].items() if k != "memory"}
        assert t["resources"] == found, f"{name} declares {t['resources']} but {t['node_config']['InstanceType']} has {found}"


def test_aws_spot_option_validates_when_enabled():
    text = AWS_YAML.read_text()
    assert "InstanceMarketOptions" not in yaml.safe_load(text)["available_node_types"]["gpu-train"]["node_config"]
    spot_text, n = re.subn(r"(?m)^(\s*)# (InstanceMarketOptions:|  MarketType: spot)\s*$", r"\1\2", text)
    assert n >= 4, "each GPU node type carries the two commented spot lines"
    config = validated_aws_config(spot_text)
    for name in JOB_NODE_TYPE.values():
        assert config["available_node_types"][name]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}


@pytest.mark.parametrize("where,module,args", all_doc_commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_doc_commands_fit_the_aws_node_types(where, module, args, monkeypatch):
    check_command_fits(aws_runtime_config(validated_aws_config(), monkeypatch), where, module, args)


def test_cpu_only_work_never_starts_a_gpu_node(monkeypatch):
    aws = aws_runtime_config(validated_aws_config(), monkeypatch)
    kuberay = kuberay_autoscaling_config("onade", load_yaml(KUBERAY / "raycluster.yaml")["spec"])
    for config in (aws, kuberay):
        assert plan(config, [{"CPU": 1.0}] * 20) == ({CPU_NODE_TYPE: 2}, [])


# ---------------------------------------------------------------- the drift checks can fail


def test_fit_check_rejects_a_worker_no_node_type_can_hold(monkeypatch):
    config = aws_runtime_config(validated_aws_config(), monkeypatch)
    common = ["--workers", "2", "--accelerator-type", "A100"]
    with pytest.raises(AssertionError, match="more than any node type offers"):
        check_command_fits(config, "here", "ray_jobs.train", common + ["--gpus-per-worker", "16"])
    with pytest.raises(AssertionError, match="more than any node type offers"):
        check_command_fits(config, "here", "ray_jobs.train", common + ["--gpus-per-worker", "1", "--cpus-per-worker", "200"])
    with pytest.raises(AssertionError, match="wait forever"):
        check_command_fits(config, "here", "ray_jobs.train", ["--workers", "40", "--gpus-per-worker", "1",
                                                              "--accelerator-type", "A100"])


def test_without_accelerator_type_a_big_inpainting_pool_lands_on_training_nodes(monkeypatch):
    # The claim in the docs that makes --accelerator-type necessary, checked against Ray's planner.
    config = aws_runtime_config(validated_aws_config(), monkeypatch)
    with pytest.raises(AssertionError, match="gpu-train"):
        check_command_fits(config, "here", "ray_jobs.inpaint", ["--workers", "8", "--gpus-per-worker", "1"])


def test_docs_show_both_jobs():
    sources = doc_sources()
    assert sources, "docs/cluster.md is missing"
    for where, text in sources:
        modules = {m for m, _ in job_commands(text)}
        assert modules == set(JOB_NODE_TYPE), f"{where} shows {modules}"
        assert "ray up cluster/aws.yaml" in text and "--working-dir ." in text, where


# ---------------------------------------------------------------- KubeRay


def pinned_images(spec: dict) -> list[str]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c["image"] for g in groups for c in g["template"]["spec"]["containers"]]


def test_raycluster_has_what_kuberay_requires():
    cr = load_yaml(KUBERAY / "raycluster.yaml")
    assert cr["apiVersion"] == "ray.io/v1" and cr["kind"] == "RayCluster"
    spec = cr["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert set(pinned_images(spec)) == {IMAGE}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "the head must take no work"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(JOB_NODE_TYPE.values()) | {CPU_NODE_TYPE} <= set(groups)
    for name, g in groups.items():
        assert g["minReplicas"] == 0 and 1 <= g["maxReplicas"], name
        assert g["template"]["spec"]["containers"], name
    for name in JOB_NODE_TYPE.values():
        limits = groups[name]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, f"{name} needs a GPU limit"
    assert int(groups["gpu-train"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == 8

    config = kuberay_autoscaling_config(cr["metadata"]["name"], spec)
    assert config["available_node_types"]["headgroup"]["resources"]["CPU"] == 0


@pytest.mark.parametrize("module", sorted(RAYJOBS))
def test_rayjob_has_what_kuberay_requires(module):
    job = load_yaml(RAYJOBS[module])
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"] == load_yaml(KUBERAY / "raycluster.yaml")["spec"], (
        "the RayJob's rayClusterSpec must be cluster/kuberay/raycluster.yaml's spec")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env.pop("working_dir").startswith("s3://")
    assert runtime_env == load_yaml(KUBERAY / "runtime-env.yaml")

    tokens = shlex.split(spec["entrypoint"])
    assert tokens[:3] == ["python", "-m", module]
    docs = [args for _, m, args in all_doc_commands() if m == module]
    assert tokens[3:] in docs, f"{RAYJOBS[module].name}'s entrypoint is not a documented command: {tokens[3:]}"
    config = kuberay_autoscaling_config(job["metadata"]["name"], spec["rayClusterSpec"])
    check_command_fits(config, RAYJOBS[module].name, module, tokens[3:])


@pytest.mark.parametrize("where,module,args", all_doc_commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_doc_commands_fit_the_kuberay_groups(where, module, args):
    spec = load_yaml(KUBERAY / "raycluster.yaml")["spec"]
    check_command_fits(kuberay_autoscaling_config("onade", spec), where, module, args)


def check_pip_list(where: str, entries: list[str]) -> None:
    """A KubeRay pip list names pyproject's dependencies (Ray comes with the image), each at the exact version
    constraints.txt pins."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(Requirement(r).name): Requirement(r)
              for r in project["dependencies"] + project["optional-dependencies"]["jobs"]}
    wanted.pop("ray")
    listed = {canonicalize_name(Requirement(e).name): Requirement(e) for e in entries}
    assert listed.keys() == wanted.keys(), (f"{where} installs {sorted(listed)}, but pyproject's dependencies "
                                            f"are {sorted(wanted)}")
    for name, req in listed.items():
        assert str(req.specifier) == f"=={PINS[name]}", (
            f"{where}: {req} disagrees with constraints.txt's {name}=={PINS[name]} (the version the tests ran)")
        assert not req.extras or req.extras == wanted[name].extras, f"{where}: {req}"


def runtime_env_of(where: str) -> dict:
    """The runtime environment a KubeRay manifest (or cluster/serve.yaml) gives the code it runs."""
    if where == "runtime-env.yaml":
        return load_yaml(KUBERAY / where)
    if where == "serve.yaml":
        return serve_app(load_yaml(SERVE_YAML))["runtime_env"]
    if where == "rayservice.yaml":
        return serve_app(yaml.safe_load(load_yaml(RAYSERVICE)["spec"]["serveConfigV2"]))["runtime_env"]
    return yaml.safe_load(load_yaml(KUBERAY / where)["spec"]["runtimeEnvYAML"])


@pytest.mark.parametrize("where", ["runtime-env.yaml", *sorted(p.name for p in RAYJOBS.values()), "serve.yaml",
                                   "rayservice.yaml"])
def test_kuberay_pip_lists_pin_what_the_tests_ran(where):
    check_pip_list(where, runtime_env_of(where)["pip"])


def test_kuberay_images_and_ray_version_are_the_pinned_ray():
    specs = {"raycluster.yaml": load_yaml(KUBERAY / "raycluster.yaml")["spec"],
             "rayservice.yaml": load_yaml(RAYSERVICE)["spec"]["rayClusterConfig"]}
    specs.update({p.name: load_yaml(p)["spec"]["rayClusterSpec"] for p in RAYJOBS.values()})
    for where, spec in specs.items():
        assert spec["rayVersion"] == PINS["ray"], f"{where}: rayVersion {spec['rayVersion']} is not ray=={PINS['ray']}"
        for image in pinned_images(spec):
            assert image.split(":")[1].split("-")[0] == PINS["ray"], f"{where}: {image} is not ray=={PINS['ray']}"


def test_pin_check_rejects_a_manifest_that_disagrees_with_the_constraints():
    good = load_yaml(KUBERAY / "runtime-env.yaml")["pip"]
    check_pip_list("here", good)
    for bad, why in ((f"torch=={Version(PINS['torch']).major}.0.0", "disagrees with constraints.txt"),
                     ("torch>=2.4", "disagrees with constraints.txt"),
                     ("torch", "disagrees with constraints.txt")):
        with pytest.raises(AssertionError, match=why):
            check_pip_list("here", [bad if canonicalize_name(Requirement(e).name) == "torch" else e for e in good])
    with pytest.raises(AssertionError, match="pyproject's dependencies"):
        check_pip_list("here", [e for e in good if not e.startswith("tqdm")])


# ---------------------------------------------------------------- Ray Serve (cluster/serve.yaml, rayservice.yaml)


def serve_app(config: dict) -> dict:
    (app,) = config["applications"]
    return app


def serve_options(config: dict, monkeypatch) -> ServeOptions:
    """The app's settings as its builder on the cluster reads them, with the token in the environment."""
    monkeypatch.setenv(TOKEN_ENV, "a-token-from-the-environment")
    return ServeOptions.from_args(serve_app(config)["args"])


def replica_request(o: ServeOptions) -> tuple[int, dict]:
    """How many replicas the app may run and the bundle each asks Ray for, from the app's own deployment options."""
    actor = o.deployment_options()["ray_actor_options"]
    bundle = {"CPU": float(actor["num_cpus"]), "GPU": float(actor["num_gpus"])}
    if actor.get("accelerator_type"):
        bundle[f"accelerator_type:{actor['accelerator_type']}"] = ACCELERATOR_SLIVER
    return o.max_replicas, {k: v for k, v in bundle.items() if v > 0}


def without_serve_additions(spec: dict) -> dict:
    """rayservice.yaml's rayClusterConfig less the port and the token it adds to raycluster.yaml's spec."""
    spec = copy.deepcopy(spec)
    (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert SERVE_PORT in head.get("ports", []), "rayservice.yaml: the head must expose port 8000 named `serve`"
    head["ports"].remove(SERVE_PORT)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            name = group.get("groupName", "head")
            assert TOKEN_FROM_SECRET in container.get("env", []), (
                f"rayservice.yaml: {name}'s {container['name']} must take {TOKEN_ENV} from the Secret: "
                f"{TOKEN_FROM_SECRET}")
            container["env"].remove(TOKEN_FROM_SECRET)
            if not container["env"]:
                del container["env"]
    return spec


def test_serve_yaml_passes_serves_schema_with_no_key_it_would_ignore():
    config = load_yaml(SERVE_YAML)
    schema = ServeDeploySchema.model_validate(config)
    # These models ignore unknown keys (forward compatibility): a misspelt key would be dropped silently.
    for where, data, model in (("the file", config, ServeDeploySchema),
                               ("http_options", config["http_options"], HTTPOptionsSchema),
                               ("the application", serve_app(config), ServeApplicationSchema)):
        ignored = sorted(set(data) - set(model.model_fields))
        assert not ignored, f"cluster/serve.yaml: {where} has keys Serve ignores: {ignored}"
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == ("onade", "/", "ray_jobs.serve.app:build")


def test_serve_yaml_import_path_is_the_app_builder():
    # What Serve's builder task does first on the cluster; it builds no deployment and starts no Ray.
    module, attr = serve_app(load_yaml(SERVE_YAML))["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr)), f"{module}:{attr} is not the app builder"


def test_serve_yaml_args_are_what_the_app_accepts(monkeypatch):
    config = load_yaml(SERVE_YAML)
    o = serve_options(config, monkeypatch)
    http = config["http_options"]
    assert (o.host, o.port) == (http["host"], http["port"]), "the app's host and port are where Serve listens"
    assert http["request_timeout_s"] == o.deadline_s + 30, "Serve's timeout backs up the app's deadline, 30 s later"
    assert (o.gpus_per_replica, o.accelerator_type) == (1, "A10G")
    assert o.min_replicas < o.max_replicas, "the app autoscales"
    assert o.max_batch <= o.max_ongoing_requests, "a replica sees enough requests to fill a batch"
    inpaint_checkpoints = {args[args.index("--checkpoint") + 1] for _, module, args in all_doc_commands()
                           if module == "ray_jobs.inpaint"}
    assert o.checkpoint in inpaint_checkpoints, f"serve the model docs/cluster.md inpaints with: {inpaint_checkpoints}"


def test_serve_yaml_without_a_token_is_refused(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    args = serve_app(load_yaml(SERVE_YAML))["args"]
    assert "token" not in args, "the token comes from the environment, never from the file"
    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0 without a token"):
        ServeOptions.from_args(args)


def test_serve_yaml_runs_the_jobs_code_and_packages():
    runtime_env = dict(runtime_env_of("serve.yaml"))
    jobs_dirs = {runtime_env_of(p.name)["working_dir"] for p in RAYJOBS.values()}
    assert runtime_env.pop("working_dir") in jobs_dirs, f"the code is the zip the RayJobs run: {jobs_dirs}"
    assert runtime_env == load_yaml(KUBERAY / "runtime-env.yaml")


@pytest.mark.parametrize("cluster", ["aws.yaml", "rayservice.yaml"])
def test_serve_replicas_fit_the_inpainting_nodes(cluster, monkeypatch):
    o = serve_options(load_yaml(SERVE_YAML), monkeypatch)
    count, bundle = replica_request(o)
    assert bundle == {"CPU": 4.0, "GPU": 1.0, "accelerator_type:A10G": ACCELERATOR_SLIVER}
    if cluster == "aws.yaml":
        config = aws_runtime_config(validated_aws_config(), monkeypatch)
    else:
        config = kuberay_autoscaling_config("onade", load_yaml(RAYSERVICE)["spec"]["rayClusterConfig"])
    # All max_replicas at once fit the group's max_workers, and nothing but gpu-inpaint nodes start.
    check_fits(config, f"cluster/serve.yaml on {cluster}", "a Serve replica", count, bundle, SERVE_NODE_TYPE)


def test_serve_fit_check_rejects_too_many_or_the_wrong_replicas(monkeypatch):
    config = aws_runtime_config(validated_aws_config(), monkeypatch)
    replica = {"CPU": 4.0, "GPU": 1.0, "accelerator_type:A10G": ACCELERATOR_SLIVER}
    with pytest.raises(AssertionError, match="wait forever"):
        check_fits(config, "here", "a Serve replica", 9, replica, SERVE_NODE_TYPE)
    with pytest.raises(AssertionError, match="more than any node type offers"):
        check_fits(config, "here", "a Serve replica", 1, {**replica, "CPU": 9.0}, SERVE_NODE_TYPE)
    with pytest.raises(AssertionError, match="gpu-train"):  # without accelerator_type a replica may take an A100
        check_fits(config, "here", "a Serve replica", 8, {"CPU": 4.0, "GPU": 1.0}, SERVE_NODE_TYPE)


def test_rayservice_carries_serve_yaml_on_the_raycluster():
    service = load_yaml(RAYSERVICE)
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    spec = service["spec"]
    assert isinstance(spec["serveConfigV2"], str), "KubeRay takes serveConfigV2 as a YAML string"
    assert yaml.safe_load(spec["serveConfigV2"]) == load_yaml(SERVE_YAML), (
        "rayservice.yaml's serveConfigV2 must be cluster/serve.yaml")
    assert without_serve_additions(spec["rayClusterConfig"]) == load_yaml(KUBERAY / "raycluster.yaml")["spec"], (
        "rayservice.yaml's rayClusterConfig must be raycluster.yaml's spec plus the serve port and the token")
    head = spec["rayClusterConfig"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    assert SERVE_PORT["containerPort"] == load_yaml(SERVE_YAML)["http_options"]["port"]


def test_rayservice_check_rejects_a_missing_port_or_token():
    good = load_yaml(RAYSERVICE)["spec"]["rayClusterConfig"]
    no_port = copy.deepcopy(good)
    no_port["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"].remove(SERVE_PORT)
    with pytest.raises(AssertionError, match="port 8000"):
        without_serve_additions(no_port)
    literal = copy.deepcopy(good)
    env = literal["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["env"]
    env[env.index(TOKEN_FROM_SECRET)] = {"name": TOKEN_ENV, "value": "written-into-the-manifest"}
    with pytest.raises(AssertionError, match="gpu-inpaint's ray-worker must take ONADE_SERVE_TOKEN"):
        without_serve_additions(literal)
