"""cbr-crawler nightly on Airflow (2.4+ or 3): one mapped task per shard, then a merge.

``crawl_shard.expand(shard=[0, 1, 2, 3])`` runs ``cbr-crawler run --shard K/4`` for each shard (in
parallel, up to the pool's slots); ``merge_shards`` then joins the shard manifests into
``OUTPUT_BASE/<ds>/manifest.json`` and writes ``_SUCCESS`` only if every scope is complete.

Exit codes -> Airflow:
    0    success
    1    incomplete inventory: the task FAILS WITHOUT RETRY (AirflowFailException). The crawler
         already retried every request; the manifest says which scope failed and why, and an Airflow
         retry would re-crawl the whole shard. Clear the task by hand once the cause is fixed.
    2    configuration or usage error: fails without retry (fix the tenant files first)
    130  interrupted (the task was killed or timed out: Airflow sends SIGTERM to the task's process
         group, so the crawler stops cleanly): retried; the retry resumes from the shard's checkpoint
    *    anything else (OOM kill, crash): retried, resuming likewise

The merge runs with trigger_rule "all_done": also when a shard failed, so the merged manifest
says what is incomplete. It refuses (exit 2) when a shard never wrote a manifest.
Runs the crawler as a subprocess on the worker; with the KubernetesPodOperator the same command
and exit-code mapping apply.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone

from airflow.exceptions import AirflowException, AirflowFailException

try:  # Airflow 3
    from airflow.sdk import dag, get_current_context, task
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task
    from airflow.operators.python import get_current_context

SHARDS = 4
CRAWLER = "/opt/cbr-crawler/.venv/bin/cbr-crawler"
CONFIG = "/etc/cbr-crawler/tenants"
OUTPUT_BASE = "/data/cbr"

EXPLANATIONS = {
    1: "inventory incomplete (some scope partial or failed, or a tenant failed): see the manifest; "
    "not retried (the crawler retried each request already; a retry re-crawls the shard)",
    2: "configuration or usage error: fix the tenant files (`cbr-crawler validate`); not retried",
    130: "interrupted: retrying resumes from the checkpoint",
}


def raise_for_exit_code(code: int, what: str) -> None:
    """Turn a cbr-crawler exit code into the Airflow outcome it deserves."""
    if code == 0:
        return
    message = f"{what}: exit code {code}: " + EXPLANATIONS.get(code, "unexpected; retrying resumes")
    if code in (1, 2):
        raise AirflowFailException(message)  # failed, no retry
    raise AirflowException(message)  # failed, retried per the task's retries


def _run(args: list[str], what: str) -> None:
    # Inherits stdout/stderr: the crawler's log lines and summary land in the task log.
    code = subprocess.run([CRAWLER, *args], check=False).returncode
    raise_for_exit_code(code, what)


@dag(
    dag_id="cbr_crawler_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2026, 11, 1, tzinfo=timezone.utc),  # noqa: UP017 - workers may run Python < 3.11
    catchup=False,
    max_active_runs=1,  # two nights at once would share (and exceed) the credentials' budgets
    default_args={"retries": 3, "retry_delay": timedelta(minutes=5)},
    tags=["inventory", "cbr"],
)
def cbr_crawler_nightly() -> None:
    @task(execution_timeout=timedelta(hours=6))
    def crawl_shard(shard: int) -> None:
        context = get_current_context()
        # One run id and output directory for all shards of this DAG run; a retried shard reuses
        # them and so resumes its checkpoint.
        run_id, output = f"airflow-{context['ts_nodash']}", f"{OUTPUT_BASE}/{context['ds']}"
        _run(
            [
                "run",
                "--config",
                CONFIG,
                "--output",
                output,
                "--shard",
                f"{shard}/{SHARDS}",
                "--run-id",
                run_id,
            ],
            f"shard {shard} of {SHARDS}",
        )

    @task(trigger_rule="all_done", retries=0)
    def merge_shards() -> None:
        context = get_current_context()
        _run(["merge", f"{OUTPUT_BASE}/{context['ds']}", "--shards", str(SHARDS)], "merge")

    crawl_shard.expand(shard=list(range(SHARDS))) >> merge_shards()


cbr_crawler_nightly()
