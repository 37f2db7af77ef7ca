"""cbr-crawler nightly on Airflow (2.4+ or 3), writing to object storage: no shared volume.

One task runs ``cbr-crawler run --output s3://inventory/cbr/<ds>`` (Huawei OBS or any S3-compatible
store). A retry of the task, on any worker, continues the same run from the checkpoint in the
bucket (``PREFIX/.cbr-crawler/``): same run id, only the scopes not yet complete are fetched, and
the multipart uploads the killed attempt left open are aborted. (Sharding with a merge still needs
the shared volume of ``airflow_cbr_crawler_dag.py``: ``merge`` does not read object storage yet.)

The store is configured by the worker's environment, apart from the CBR credential:
``CBR_CRAWLER_S3_ENDPOINT`` (e.g. ``https://obs.cn-north-4.myhuaweicloud.com``),
``CBR_CRAWLER_S3_REGION``, and the key pair (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, or
``CBR_CRAWLER_S3_ACCESS_KEY_FILE``/``CBR_CRAWLER_S3_SECRET_KEY_FILE``).

Exit codes -> Airflow, as in airflow_cbr_crawler_dag.py: 0 success; 1 incomplete inventory or the
bucket cannot be written (the message names bucket, key and the store's code) and 2 configuration
errors fail without retry; 130 (interrupted) and anything else are retried, resuming.
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

CRAWLER = "/opt/cbr-crawler/.venv/bin/cbr-crawler"
CONFIG = "/etc/cbr-crawler/tenants"
OUTPUT_BASE = "s3://inventory/cbr"

EXPLANATIONS = {
    1: "inventory incomplete, or the bucket cannot be written: see the log and the manifest; not retried",
    2: "configuration or usage error: fix the tenant files or the store settings; not retried",
    130: "interrupted: retrying resumes from the checkpoint in the bucket",
}


def raise_for_exit_code(code: int, what: str) -> None:
    """Turn a cbr-crawler exit code into the Airflow outcome it deserves."""
    if code == 0:
        return
    message = f"{what}: exit code {code}: " + EXPLANATIONS.get(code, "unexpected; retrying resumes")
    if code in (1, 2):
        raise AirflowFailException(message)  # failed, no retry
    raise AirflowException(message)  # failed, retried per the task's retries


@dag(
    dag_id="cbr_crawler_nightly_to_bucket",
    schedule="0 2 * * *",
    start_date=datetime(2026, 11, 1, tzinfo=timezone.utc),  # noqa: UP017 - workers may run Python < 3.11
    catchup=False,
    max_active_runs=1,  # two nights at once would share (and exceed) the credentials' budgets
    default_args={"retries": 3, "retry_delay": timedelta(minutes=5)},
    tags=["inventory", "cbr"],
)
def cbr_crawler_nightly_to_bucket() -> None:
    @task(execution_timeout=timedelta(hours=6))
    def crawl_to_bucket() -> None:
        context = get_current_context()
        # One run id and prefix per DAG run: a retry reuses them and so resumes from the bucket.
        run_id, output = f"airflow-{context['ts_nodash']}", f"{OUTPUT_BASE}/{context['ds']}"
        command = [CRAWLER, "run", "--config", CONFIG, "--output", output, "--run-id", run_id, "--no-report"]
        # Inherits stdout/stderr: the crawler's log lines and summary land in the task log.
        raise_for_exit_code(subprocess.run(command, check=False).returncode, "crawl")

    crawl_to_bucket()


cbr_crawler_nightly_to_bucket()
