#!/usr/bin/env bash
# Nightly cbr-crawler run for cron: one run per UTC day into OUTPUT_BASE/YYYY-MM-DD, optionally
# as SHARDS parallel processes (one per CPU core is a sensible ceiling: one crawler process uses
# one core), merged at the end. Exits with the crawler's exit code, so cron (MAILTO) or a
# monitoring wrapper sees what happened:
#
#   0    complete: _SUCCESS written, OUTPUT_BASE/latest points at today's output
#   1    incomplete: some scope partial or failed, or a tenant failed; `latest` is NOT moved.
#        The manifest says which scope and why. Running the script again the same day starts
#        the crawl afresh (a run that reached its manifest is finished).
#   2    configuration or usage error: fix the tenant files (`cbr-crawler validate`); no retry
#   130  interrupted (SIGTERM/SIGINT, e.g. a shutdown): running the script again the same day
#        resumes from the checkpoint; complete scopes are not fetched again
#   *    anything else (a crash, an OOM kill): run it again; it resumes like 130
#
# Usage:  cbr-crawler-nightly.sh CONFIG_DIR OUTPUT_BASE
# Environment:
#   CBR_CRAWLER          the crawler command (default: cbr-crawler), e.g. "/opt/cbr/.venv/bin/cbr-crawler"
#   SHARDS               parallel shard processes (default 1: no sharding)
#   CBR_CRAWLER_RUN_ID   run id (default: nightly-YYYY-MM-DD, so a rerun the same day resumes)
#   RUN_DATE             the day's directory name (default: today, UTC)
#   ALERT_CMD            optional command given one line of text when the result is not 0
#   plus the secrets the tenant files name (password_env, ...)
#
# crontab (02:00 UTC daily; cron runs with a bare environment, so set what is needed):
#   CRON_TZ=UTC
#   0 2 * * * . /etc/cbr-crawler/env && /opt/cbr/cbr-crawler-nightly.sh /etc/cbr-crawler/tenants /data/cbr >>/var/log/cbr-crawler.log 2>&1
set -uo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 CONFIG_DIR OUTPUT_BASE" >&2
    exit 2
fi
config=$1
base=$2
read -r -a crawler <<<"${CBR_CRAWLER:-cbr-crawler}"
shards=${SHARDS:-1}
day=${RUN_DATE:-$(date -u +%F)}
run_id=${CBR_CRAWLER_RUN_ID:-nightly-$day}
out=$base/$day

log() { echo "$(date -u +%FT%TZ) cbr-crawler-nightly: $*" >&2; }

alert() {
    log "$1"
    if [[ -n ${ALERT_CMD:-} ]]; then
        ${ALERT_CMD} "$1" || log "ALERT_CMD failed"
    fi
}

if ! [[ $shards =~ ^[1-9][0-9]*$ ]]; then
    alert "SHARDS=$shards is not a positive whole number"
    exit 2
fi

# The crawlers run in the background so that this shell can forward a SIGTERM (from cron's
# shutdown, systemd or a kill) to them: each stops cleanly, keeps its complete scopes, exits 130.
pids=()
stop() {
    log "stopping: forwarding SIGTERM to ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null
}
trap stop TERM INT

wait_all() {
    # Sets `codes` to each child's exit code; `wait` returns early when a trapped signal lands,
    # so wait again until the child is really gone.
    codes=()
    local pid code
    for pid in "${pids[@]}"; do
        while true; do
            wait "$pid"
            code=$?
            kill -0 "$pid" 2>/dev/null || break
        done
        codes+=("$code")
    done
}

mkdir -p "$out"
if [[ $shards -eq 1 ]]; then
    log "run $run_id: ${crawler[*]} run --config $config --output $out"
    "${crawler[@]}" run --config "$config" --output "$out" --run-id "$run_id" &
    pids=($!)
else
    log "run $run_id: $shards shards into $out/shard-K-of-$shards"
    for ((k = 0; k < shards; k++)); do
        "${crawler[@]}" run --config "$config" --output "$out" --run-id "$run_id" --shard "$k/$shards" &
        pids+=($!)
        log "started shard $k of $shards (pid $!)"
    done
fi
wait_all
log "crawler exit code(s): ${codes[*]}"

# The worst outcome decides: a configuration error, then an interruption, then anything else.
# 143 is a crawler killed by SIGTERM before it could install its handler: interrupted as well.
result=0
for code in "${codes[@]}"; do
    case $code in
        0) ;;
        2) result=2 ;;
        130 | 143) [[ $result -ne 2 ]] && result=130 ;;
        1) [[ $result -eq 0 ]] && result=1 ;;
        *) [[ $result -eq 0 || $result -eq 1 ]] && result=$code ;;
    esac
done

if [[ $shards -gt 1 && ($result -eq 0 || $result -eq 1) ]]; then
    # Every shard reached its manifest (complete or not): join them. The merged manifest says
    # which scopes are incomplete; _SUCCESS only if all are complete.
    "${crawler[@]}" merge "$out" --shards "$shards"
    result=$?
fi

case $result in
    0)
        ln -sfn "$day" "$base/latest"
        log "complete: $out (latest -> $day)"
        ;;
    1) alert "cbr-crawler $run_id INCOMPLETE: see $out/manifest.json (status, error per scope); latest not moved" ;;
    2) alert "cbr-crawler $run_id: configuration or usage error (see the log above); fix it, run validate" ;;
    130) alert "cbr-crawler $run_id interrupted: run this script again today to resume" ;;
    *) alert "cbr-crawler $run_id failed unexpectedly (exit $result): run this script again today to resume" ;;
esac
exit "$result"
