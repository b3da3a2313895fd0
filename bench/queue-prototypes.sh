#!/usr/bin/env bash
# Instructions per event of the queue designs compared in docs/queue.md,
# counted as bench/instructions.sh counts today's: a single-user backend
# under callgrind, each measure taken at two sizes and differenced so that
# start-up and set-up cancel out.
#
#   bash bench/queue-prototypes.sh                   # every prototype
#   ALTS="today b" bash bench/queue-prototypes.sh    # some of them
#   N=1000 BATCHES="32" KEYS=100 bash bench/queue-prototypes.sh
#   WRITER=0 ALTS="b-final" bash bench/queue-prototypes.sh   # the relay's side only
#   TIMING=1 ALTS="today b-final" ROUNDS=3 T=15 bash bench/queue-prototypes.sh
#
# For each prototype, a copy of the reference database gets the prototype's
# schema (bench/queue/<name>-schema.sql and friends, applied on top of
# migrations/ V1..V5) and its relay loop, a procedure that runs the
# prototype's statements (bench/queue/*.sql, one statement per file) by
# EXECUTE, each committed on its own as the relay's are. Two figures:
#
#   writer: instructions per top-up through the reference triggers in all
#           (the application's UPDATE included; N and 3N top-ups, each its own
#           transaction), the figure that is 588k today;
#   relay:  instructions per event of the relay's statements draining a
#           backlog of 4N and then 12N events over KEYS ordering keys (default:
#           every event its own key), reading or claiming BATCH rows a
#           statement and writing every outcome back as delivered, one
#           write-back statement per batch. The figure that is 395k today.
#
# The prototypes' relay loops do no HTTP and keep no per-key state in memory:
# they measure what the database does per event, not the relay's own work.
set -euo pipefail
shopt -s inherit_errexit

N=${N:-500}
BATCHES=${BATCHES:-32 200}
ALTS=${ALTS:-today a b b-hot b-1stmt b-final b-final-brin b2-final c}
cd "$(dirname "$0")/.."
KEYS=${KEYS:-$((12 * N))}
q=bench/queue
# shellcheck source=bench/callgrind-lib.sh
. bench/callgrind-lib.sh

# Per prototype: its schema files (after common.sql), and its statements as
# name=file pairs.
declare -A schema=(
    [today]="$q/claim-drain.sql"
    [a]="$q/a-schema.sql $q/claim-drain.sql"
    [b]="$q/b-schema.sql $q/b-drain.sql"
    [b-hot]="$q/b-schema.sql $q/fillfactor.sql $q/b-drain.sql"
    [b-1stmt]="$q/b-schema.sql $q/fillfactor.sql $q/b-enqueue.sql $q/b-drain.sql"
    [b-final]="$q/b-schema.sql $q/fillfactor.sql $q/b-enqueue.sql $q/cheap-event-id.sql $q/triggers-assign.sed $q/switch-on-endpoint.sql $q/b-drain.sql"
    [b-final-ff80]="$q/b-schema.sql $q/b-enqueue.sql $q/cheap-event-id.sql $q/triggers-assign.sed $q/switch-on-endpoint.sql $q/b-drain.sql"
    [b-final-brin]="$q/b-schema.sql $q/fillfactor.sql $q/b-enqueue.sql $q/cheap-event-id.sql $q/triggers-assign.sed $q/switch-on-endpoint.sql $q/event-id-brin.sql $q/b-drain.sql"
    [b2-final]="$q/b-schema.sql $q/b-enqueue.sql $q/cheap-event-id.sql $q/triggers-assign.sed $q/switch-on-endpoint.sql $q/b-drain.sql $q/b2-schema.sql"
    [c]="$q/c-schema.sql"
)
b_statements="read=$q/b-read.sql complete=$q/b-complete.sql cursor=$q/b-cursor.sql"
declare -A statements=(
    [today]="claim=sql/claim.sql complete=sql/complete.sql"
    [a]="claim=$q/a-claim.sql complete=sql/complete.sql"
    [b]="$b_statements"
    [b-hot]="$b_statements"
    [b-1stmt]="$b_statements"
    [b-final]="$b_statements"
    [b-final-ff80]="$b_statements"
    [b-final-brin]="$b_statements"
    [b2-final]="read=$q/b2-read.sql complete=$q/b2-complete.sql cursor=$q/b-cursor.sql"
    [c]="claim=$q/c-claim.sql complete=$q/c-complete.sql"
)

# TIMING=1: seconds instead of instructions, on the running cluster, the
# prototypes taking turns (ROUNDS rounds) since this VM's speed drifts:
# pgbench top-ups through the triggers (8 clients, T seconds, relay stopped),
# and one session draining a backlog of 20,000 events with the prototype's
# statements (the database's side of a drain, without HTTP).
timing() {
    local round alt db tps secs
    export PGOPTIONS="-c client_min_messages=warning"
    printf '\\set b random(1, 10000)\nUPDATE buyer_credits SET balance = balance + 1 WHERE buyer_id = '"'"'b'"'"' || :b;\n' >"$work/topup.pgbench"
    echo "# timing: pgbench -n -c 8 -j 2 -T ${T:-15} (top-ups, triggers on, relay stopped); drain of 20000 events, batches of 200"
    echo "# $("$bindir/postgres" --version); $(nproc) cores, $(uname -m); shared_buffers=1GB, fsync on"
    for round in $(seq "${ROUNDS:-3}"); do
        for alt in $ALTS; do
            db="q_${alt//-/_}"
            psql_ -d "$db" -c "CALL bench_reset()" -c "ALTER TABLE buyer_credits ENABLE TRIGGER webhook_events" -c "CHECKPOINT" >/dev/null
            tps=$(pgbench -n -h "$work" -p "$port" -U postgres -c 8 -j 2 -T "${T:-15}" -f "$work/topup.pgbench" "$db" 2>/dev/null \
                | awk '/^tps/ { print int($3) }' | head -1)
            psql_ -d "$db" -c "ALTER TABLE buyer_credits DISABLE TRIGGER webhook_events" -c "CALL bench_backlog(20000, 20000)" -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
            secs=$(psql_ -d "$db" -c '\timing on' -c "CALL bench_drain(200)" | awk '/^Time:/ { print $2 / 1000 }')
            printf 'round %d %-13s top-ups %6d tps   drain %6d events/s\n' "$round" "$alt" "$tps" "$(awk -v s="$secs" 'BEGIN { print int(20000 / s) }')"
        done
    done
}

cg_init
for alt in $ALTS; do
    [ -n "${schema[$alt]+x}" ] || { echo "queue-prototypes.sh: no prototype named $alt" >&2; exit 2; }
    db="q_${alt//-/_}"
    psql_ -d postgres -c "CREATE DATABASE $db TEMPLATE bench"
    for f in "$q/common.sql" ${schema[$alt]}; do
        case $f in
            # A sed script: applied to sql/triggers.sql, the result loaded.
            *.sed) sed -f "$f" sql/triggers.sql | PGOPTIONS='-c client_min_messages=warning' psql_ -d "$db" >/dev/null ;;
            *) psql_ -d "$db" -f "$f" >/dev/null ;;
        esac
    done
    for pair in ${statements[$alt]}; do
        # Without its comments: the relay parses a statement once, when it
        # prepares it, and the benchmark at every execution.
        sed -e 's/--.*$//' "${pair#*=}" >"$work/stmt.sql"
        printf '\\set s `cat %s`\nINSERT INTO bench_stmt VALUES (%s, :%s);\n' "$work/stmt.sql" "'${pair%%=*}'" "'s'" \
            | psql_ -d "$db" >/dev/null
    done
    psql_ -d "$db" -c "VACUUM ANALYZE" >/dev/null
done
if [ -n "${TIMING:-}" ]; then
    timing
    exit 0
fi
cg_stop

writer() {
    local db=$1 small large
    cg_topups "CALL bench_reset(); ALTER TABLE buyer_credits ENABLE TRIGGER webhook_events;" "$N" "$work/in.sql"
    small=$(cg_count "$db" "$work/in.sql")
    cg_topups "CALL bench_reset(); ALTER TABLE buyer_credits ENABLE TRIGGER webhook_events;" $((3 * N)) "$work/in.sql"
    large=$(cg_count "$db" "$work/in.sql")
    echo $(( (large - small) / (2 * N) ))
}
# Drains a backlog of $2 events in batches of $3 on database $1; prints the
# instructions counted and, after a space, those spent parsing and planning.
drain() {
    local db=$1 rows=$2 batch=$3 n left
    printf 'CALL bench_backlog(%d, %d);\nVACUUM ANALYZE;\n' "$rows" "$KEYS" >"$work/backlog.sql"
    cg_single "$db" "$work/backlog.sql"
    echo "CALL bench_drain($batch);" >"$work/in.sql"
    n=$(cg_count "$db" "$work/in.sql")
    left=$(cg_value "$db" "SELECT bench_left();")
    [ "$left" = 0 ] || { echo "queue-prototypes.sh: $db's drain left $left events undelivered" >&2; exit 1; }
    echo "$n $(cg_planning "$work/callgrind.out")"
}
# Per event: all of it, and without the parsing and planning.
relay() {
    local db=$1 batch=$2 small large
    small=($(drain "$db" $((4 * N)) "$batch"))
    large=($(drain "$db" $((12 * N)) "$batch"))
    echo "$(( (large[0] - small[0]) / (8 * N) )) $(( (large[0] - large[1] - small[0] + small[1]) / (8 * N) ))"
}

echo "# instructions per top-up and per event (callgrind, single-user backend)"
echo "# writer: $N and $((3 * N)) top-ups; relay: backlogs of $((4 * N)) and $((12 * N)) events over $KEYS keys"
echo "# $("$bindir/postgres" --version); $(nproc) cores, $(uname -m)"
header=$(printf '%-13s %10s' prototype writer)
for b in $BATCHES; do header+=$(printf ' %11s %11s' "relay/$b" "unplanned"); done
echo "$header"
for alt in $ALTS; do
    db="q_${alt//-/_}"
    w=0
    [ "${WRITER:-1}" = 0 ] || w=$(writer "$db")
    line=$(printf '%-13s %10d' "$alt" "$w")
    for b in $BATCHES; do
        r=($(relay "$db" "$b"))
        line+=$(printf ' %11d %11d' "${r[0]}" "${r[1]}")
    done
    echo "$line"
done
