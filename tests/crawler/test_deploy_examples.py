"""The deployment examples in docs/examples work: the cron wrapper against the emulator (exit codes
propagated, sharded and not), the Kubernetes manifests parse and have the fields sharding needs, and
the Airflow DAG compiles and maps exit codes to the right Airflow outcome (with a stub of airflow,
which is not installed here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import crawler_env, scope_ids, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import FaultsSpec, LatencySpec, Scenario
from crawler.emulator.server import EmulatorThread

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
WRAPPER = EXAMPLES / "cbr-crawler-nightly.sh"

SMALL = Scenario(
    seed=31,
    estate=EstateSpec(
        seed=31, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=1500, enterprise_projects=1),)
    ),
)


def _tenant(directory: Path, url: str, **overrides: Any) -> Path:
    directory.mkdir(exist_ok=True)
    settings: dict[str, Any] = {"regions": ["cn-north-4"], "own_types": ["private", "shared"]}
    settings.update(overrides)
    write_tenant(directory, url, "acme-prod", "acme", **settings)
    return directory


def _wrapper(config: Path, base: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", str(WRAPPER), str(config), str(base)],
        env=crawler_env(CBR_CRAWLER=f"{sys.executable} -m crawler", RUN_DATE="2026-11-27", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


# -- cron ------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_cron_wrapper_sharded_run_is_merged_and_published(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path / "tenants", emu.url)
    base = tmp_path / "cbr"

    code, stderr = _result(_wrapper(config, base, SHARDS="2"))

    assert code == 0, stderr[-3000:]
    out = base / "2026-11-27"
    assert (base / "latest").resolve() == out.resolve()
    assert (out / "_SUCCESS").exists()
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"shard-0-of-2", "shard-1-of-2"}
    merged = json.loads((out / "manifest.json").read_text())
    assert merged["status"] == "complete"
    assert merged["run_id"] == "nightly-2026-11-27"
    private = [s for s in merged["scopes"] if s["own_type"] == "private"]
    assert sum(len(scope_ids(out, s)) for s in private) == emu.estate.backup_count


@pytest.mark.e2e
def test_cron_wrapper_propagates_incomplete_and_configuration_errors(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(SMALL)
    config = _tenant(tmp_path / "tenants", emu.url)
    base = tmp_path / "cbr"
    alerts = tmp_path / "alerts.txt"
    alert_cmd = f"{tmp_path / 'alert.sh'}"
    Path(alert_cmd).write_text(f'#!/bin/sh\necho "$1" >> {alerts}\n')
    os.chmod(alert_cmd, 0o755)

    code, stderr = _result(_wrapper(config, base, CBR_PW_ACME="wrong-password", ALERT_CMD=alert_cmd))
    assert code == 1, stderr[-3000:]
    assert "INCOMPLETE" in alerts.read_text()
    assert not (base / "latest").exists()
    assert json.loads((base / "2026-11-27" / "manifest.json").read_text())["status"] == "incomplete"
    assert "wrong-password" not in stderr + alerts.read_text()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "t.yaml").write_text("tenant: acme\nregions: [cn-north-4]\n")  # no auth
    code, stderr = _result(_wrapper(broken, base, SHARDS="2", ALERT_CMD=alert_cmd))
    assert code == 2, stderr[-3000:]
    assert "configuration" in alerts.read_text().splitlines()[-1]

    code, stderr = _result(_wrapper(config, base, SHARDS="two"))
    assert code == 2
    assert "SHARDS=two" in stderr


@pytest.mark.e2e
def test_cron_wrapper_sigterm_exits_130_and_a_rerun_resumes(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    slow = Scenario(
        seed=32,
        estate=EstateSpec(
            seed=32, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=3000, subprojects=2),)
        ),
        # Slow enough that both shards are still crawling when the signal comes (a single pass per
        # project makes few requests: at 60 ms a shard could finish first, and then not resume).
        faults=FaultsSpec(latency=(LatencySpec(api="cbr.list_backups", ms=200),)),
    )
    emu = emulator_factory(slow)
    config = _tenant(
        tmp_path / "tenants",
        emu.url,
        rate_limit={"requests_per_second": 200, "concurrency": 2, "page_size": 50},
    )
    base = tmp_path / "cbr"
    out = base / "2026-11-27"
    proc = _wrapper(config, base, SHARDS="2")
    # Wait until both shards hold their run lock (their signal handlers are installed by then).
    locks = [out / f"shard-{k}-of-2" / ".cbr-crawler.lock" for k in range(2)]
    deadline = time.monotonic() + 60
    while not all(lock.exists() for lock in locks) and proc.poll() is None:
        assert time.monotonic() < deadline, "the shards never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)

    code, stderr = _result(proc)
    assert code == 130, stderr[-3000:]
    assert "interrupted" in stderr
    assert not (out / "_SUCCESS").exists()

    code, stderr = _result(_wrapper(config, base, SHARDS="2"))
    assert code == 0, stderr[-3000:]
    assert "resuming run nightly-2026-11-27" in stderr
    assert (out / "_SUCCESS").exists()


# -- Kubernetes ------------------------------------------------------------------------------------


def test_kubernetes_cronjob_runs_an_indexed_job_of_shards_and_a_merge() -> None:
    documents = list(yaml.safe_load_all((EXAMPLES / "kubernetes-cronjob.yaml").read_text()))
    by_kind = {d["kind"]: d for d in documents if d}
    cron = by_kind["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed"
    container = job["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    shards = int(env["CBR_CRAWLER_SHARDS"]["value"])
    # N shard indexes plus one merge index, all started together (the merge waits for the shards).
    assert job["completions"] == job["parallelism"] == shards + 1
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert "CBR_CRAWLER_RUN_ID" in env
    assert "job-name" in env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    script = "\n".join(container["command"] + container.get("args", []))
    assert "cbr-crawler run" in script and "cbr-crawler merge" in script and "--wait" in script
    assert "JOB_COMPLETION_INDEX" in script
    # Exit codes: 2 fails the whole Job, 1 fails its index without retries, evictions are retried.
    rules = job["podFailurePolicy"]["rules"]
    actions = {
        rule["action"]: rule.get("onExitCodes", {}).get("values") or rule.get("onPodConditions")
        for rule in rules
    }
    assert actions["FailJob"] == [2]
    assert actions["FailIndex"] == [1]
    assert actions["Ignore"] == [{"type": "DisruptionTarget"}]
    assert job["backoffLimitPerIndex"] >= 1
    assert "ConfigMap" in by_kind and "PersistentVolumeClaim" in by_kind


def test_kubernetes_objectstore_cronjob_has_no_data_volume_and_resumes_from_the_bucket() -> None:
    documents = list(yaml.safe_load_all((EXAMPLES / "kubernetes-cronjob-objectstore.yaml").read_text()))
    by_kind = {d["kind"]: d for d in documents if d}
    assert "PersistentVolumeClaim" not in by_kind
    job = by_kind["CronJob"]["spec"]["jobTemplate"]["spec"]
    assert job["parallelism"] == job["completions"] == 1, "one writer per prefix"
    assert job["backoffLimit"] >= 1, "a killed pod is followed by one that resumes"
    pod = job["template"]["spec"]
    assert [v for v in pod["volumes"] if "configMap" not in v] == []
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["OUTPUT"]["value"].startswith("s3://") and "$(JOB_NAME)" in env["OUTPUT"]["value"]
    assert env["CBR_CRAWLER_RUN_ID"]["value"] == "$(JOB_NAME)"
    assert "secretKeyRef" in env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]
    assert (
        "exec cbr-crawler run" in "\n".join(container["args"])
        and '--output "$OUTPUT"' in container["args"][0]
    )
    rules = {r["action"]: r for r in job["podFailurePolicy"]["rules"]}
    assert rules["FailJob"]["onExitCodes"]["values"] == [1, 2]


# -- Airflow ---------------------------------------------------------------------------------------


class _Node:
    def __init__(self, name: str, mapped: dict[str, Any] | None = None) -> None:
        self.name, self.mapped, self.downstream = name, mapped, []  # type: ignore[var-annotated]

    def __rshift__(self, other: _Node) -> _Node:
        self.downstream.append(other)
        return other


class _Task:
    def __init__(self, fn: Callable[..., Any], kwargs: dict[str, Any], registry: list[_Task]) -> None:
        self.fn, self.kwargs, self.nodes = fn, kwargs, []  # type: ignore[var-annotated]
        registry.append(self)

    def expand(self, **mapped: Any) -> _Node:
        self.nodes.append(node := _Node(self.fn.__name__, mapped))
        return node

    def __call__(self, *args: Any, **kwargs: Any) -> _Node:
        self.nodes.append(node := _Node(self.fn.__name__))
        return node


@pytest.fixture
def stub_airflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Just enough of airflow's TaskFlow API for the DAG file to build its graph."""
    recorded: dict[str, Any] = {"tasks": [], "dags": []}

    class AirflowException(Exception):
        pass

    class AirflowFailException(AirflowException):
        pass

    def task(fn: Any = None, **kwargs: Any) -> Any:
        if fn is not None:
            return _Task(fn, {}, recorded["tasks"])
        return lambda f: _Task(f, kwargs, recorded["tasks"])

    def dag(**kwargs: Any) -> Any:
        def decorate(fn: Callable[[], Any]) -> Callable[[], Any]:
            def build() -> Any:
                recorded["dags"].append(kwargs)
                return fn()

            return build

        return decorate

    sdk = types.ModuleType("airflow.sdk")
    sdk.dag, sdk.task, sdk.get_current_context = dag, task, dict  # type: ignore[attr-defined]
    exceptions = types.ModuleType("airflow.exceptions")
    exceptions.AirflowException = AirflowException  # type: ignore[attr-defined]
    exceptions.AirflowFailException = AirflowFailException  # type: ignore[attr-defined]
    for name, module in {
        "airflow": types.ModuleType("airflow"),
        "airflow.sdk": sdk,
        "airflow.exceptions": exceptions,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    recorded["AirflowException"], recorded["AirflowFailException"] = AirflowException, AirflowFailException
    yield recorded


def test_airflow_dag_maps_shards_and_exit_codes(stub_airflow: dict[str, Any]) -> None:
    path = EXAMPLES / "airflow_cbr_crawler_dag.py"
    source = path.read_text()
    code = compile(source, str(path), "exec")  # airflow itself is not installed here
    namespace: dict[str, Any] = {"__name__": "cbr_crawler_dag"}
    exec(code, namespace)

    [dag_kwargs] = stub_airflow["dags"]
    assert dag_kwargs["max_active_runs"] == 1
    tasks = {t.fn.__name__: t for t in stub_airflow["tasks"]}
    crawl, merge = tasks["crawl_shard"], tasks["merge_shards"]
    [mapped] = crawl.nodes
    assert mapped.mapped == {"shard": list(range(namespace["SHARDS"]))}
    assert [n.name for n in mapped.downstream] == ["merge_shards"]
    assert merge.kwargs["trigger_rule"] == "all_done"  # merge even when a shard failed: it says why

    check = namespace["raise_for_exit_code"]
    check(0, "shard 0")
    fail, retry = stub_airflow["AirflowFailException"], stub_airflow["AirflowException"]
    for exit_code, expected in ((1, fail), (2, fail), (130, retry), (137, retry), (-9, retry)):
        with pytest.raises(retry) as info:
            check(exit_code, "shard 0")
        # AirflowFailException: failed, not retried; a plain AirflowException: retried.
        assert type(info.value) is expected, exit_code


def test_airflow_objectstore_dag_crawls_to_a_bucket_and_maps_exit_codes(
    stub_airflow: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = EXAMPLES / "airflow_cbr_crawler_objectstore_dag.py"
    namespace: dict[str, Any] = {"__name__": "cbr_crawler_objectstore_dag"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)

    [dag_kwargs] = stub_airflow["dags"]
    assert dag_kwargs["max_active_runs"] == 1 and dag_kwargs["default_args"]["retries"] >= 1
    [crawl] = [t for t in stub_airflow["tasks"] if t.fn.__name__ == "crawl_to_bucket"]
    # Run the task body with a DAG run's context: the command it starts is what a user would type.
    started: list[list[str]] = []

    def fake_run(command: list[str], check: bool) -> Any:
        started.append(command)
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(namespace["subprocess"], "run", fake_run)
    namespace["get_current_context"] = lambda: {"ts_nodash": "20261205T020000", "ds": "2026-12-05"}
    crawl.fn()
    [command] = started
    assert command[1:3] == ["run", "--config"]
    assert command[command.index("--output") + 1] == "s3://inventory/cbr/2026-12-05"
    assert command[command.index("--run-id") + 1] == "airflow-20261205T020000"

    check = namespace["raise_for_exit_code"]
    fail, retry = stub_airflow["AirflowFailException"], stub_airflow["AirflowException"]
    for exit_code, expected in ((1, fail), (2, fail), (130, retry), (137, retry)):
        with pytest.raises(retry) as info:
            check(exit_code, "crawl")
        assert type(info.value) is expected, exit_code
