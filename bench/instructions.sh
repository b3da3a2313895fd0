#!/usr/bin/env bash
# Instructions per top-up: what one application write costs the database,
# with the reference triggers and without, counted by callgrind. Unlike a
# throughput figure, the count does not move with what else the machine is
# doing, so it can judge a change of a few per cent to the write path.
#
#   bash bench/instructions.sh            # from the repository root
#   N=2000 bash bench/instructions.sh     # more statements per sample
#   KEEP=1 bash bench/instructions.sh     # keep the last sample's callgrind output
#   ONLY=postcode bash bench/instructions.sh   # only the postcode-change cases
#   ONLY=bulk bash bench/instructions.sh       # bulk changes of 2,500 and 10,000 buyers
#   ONLY=relay BATCHES=200 bash bench/instructions.sh   # only the relay's statements
#   ONLY=topup bash bench/instructions.sh      # only the top-up cases
#   EXTRA=file.sql bash bench/instructions.sh  # file.sql applied after the triggers (an alternative
#                                              # measured: bench/queue/triggers-fused.sql, ...)
#
# Needs valgrind and the Postgres server binaries. Starts a throwaway cluster
# in a temporary directory (as the `postgres` or `nobody` account when run as
# root), loads migrations/, sql/example_app.sql, sql/triggers.sql, one
# endpoint subscribed to every event (its wake-up switch off, as under load;
# its 16 partitions)
# and 10,000 buyers with three postcodes each, then stops it. Each case runs a
# single-user backend under callgrind twice, with N and 3N top-ups (each its
# own transaction, as in the benchmark's load); the difference divided by 2N
# is the cost of one top-up, start-up and set-up cancelled out.
set -euo pipefail

N=${N:-500}
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed" >&2; exit 2; }

bindir=""
if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/postgres" ]; then
    bindir=$(pg_config --bindir)
else
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
[ -x "$bindir/postgres" ] || { echo "instructions.sh: no Postgres server binaries found" >&2; exit 2; }

work=$(mktemp -d)
# As root, the server runs as the postgres (or nobody) account, as the
# project's throwaway clusters do.
as_server=()
if [ "$(id -u)" = 0 ]; then
    account=""
    for name in postgres nobody; do
        if id "$name" >/dev/null 2>&1; then account=$name; break; fi
    done
    [ -n "$account" ] || { echo "instructions.sh: running as root without a postgres or nobody account" >&2; exit 2; }
    as_server=(runuser -u "$account" --)
    chown "$account" "$work"
fi
data="$work/data"
cleanup() {
    "${as_server[@]}" "$bindir/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    if [ -n "${KEEP:-}" ]; then
        echo "# kept $work (callgrind.out: the last sample; callgrind_annotate reads it)"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

"${as_server[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust >"$work/initdb.log" 2>&1
port=$(( 20000 + RANDOM % 20000 ))
"${as_server[@]}" "$bindir/pg_ctl" -D "$data" -l "$work/server.log" -w \
    -o "-p $port -k $work -c listen_addresses= -c shared_buffers=1GB" start >/dev/null
psql_() { psql -X -q -v ON_ERROR_STOP=1 -h "$work" -p "$port" -U postgres "$@"; }
psql_ -d postgres -c "CREATE DATABASE bench"
# In version order: V10 sorts before V2 by name.
for f in $(ls migrations/V*.sql | sort -V) sql/example_app.sql; do psql_ -d bench -f "$f" >/dev/null; done
psql_ -d bench -f sql/triggers.sql >/dev/null 2>&1
if [ -n "${EXTRA:-}" ]; then psql_ -d bench -f "$EXTRA" >/dev/null; fi
psql_ -d bench <<'SQL' >/dev/null
INSERT INTO webhook.endpoints (name, url, events, armed)
VALUES ('bench', 'http://127.0.0.1:9/', ARRAY['user_credits_zero', 'post_code_change', 'add_credits'], false);
INSERT INTO webhook.partitions (endpoint_id, partition) SELECT 1, p FROM generate_series(0, 15) p;
ALTER TABLE buyer_credits DISABLE TRIGGER webhook_events;
ALTER TABLE buyer_postcodes DISABLE TRIGGER webhook_events;
INSERT INTO buyers SELECT 'b' || g, 'Bench Buyer ' || g, 1 FROM generate_series(1, 10000) g;
INSERT INTO buyer_postcodes SELECT 'b' || g, p FROM generate_series(1, 10000) g, unnest(ARRAY['AB1', 'BN2', 'GN3']) p;
INSERT INTO buyer_credits SELECT 'b' || g, 1000000 FROM generate_series(1, 10000) g;
CREATE FUNCTION bench_bare_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
    VALUES ('evt_bare_' || pg_current_xact_id(), 'add_credits', '{}', NEW.buyer_id, 1);
    RETURN NULL;
END $$;
SQL
psql_ -d bench -c "VACUUM ANALYZE" >/dev/null
"${as_server[@]}" "$bindir/pg_ctl" -D "$data" -w stop >/dev/null

# One sample: the case's set-up line, then `count` writes, one per line (in
# single-user mode without -j each line is a statement and a transaction):
# top-ups, or (kind "postcode") a new postcode for a buyer, whose event the
# deferred trigger writes at commit. Each sample's postcodes carry a prefix
# of their own (nine digits of the clock), so that no two samples collide.
sample() {
    local setup=$1 count=$2 kind=${3:-topup} input="$work/in.sql" out="$work/callgrind.out"
    local tag
    tag=$(printf '%09d' "$((10#$(date +%N)))")
    {
        echo "$setup"
        for i in $(seq "$count"); do
            if [ "$kind" = postcode ]; then
                echo "INSERT INTO buyer_postcodes VALUES ('b$(( (i * 7919) % 10000 + 1 ))', 'Z$tag-$i');"
            else
                echo "UPDATE buyer_credits SET balance = balance + 1 WHERE buyer_id = 'b$(( (i * 7919) % 10000 + 1 ))';"
            fi
        done
    } >"$input"
    chmod 644 "$input"
    "${as_server[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bindir/postgres" --single -D "$data" bench <"$input" >"$work/single.log" 2>&1
    if grep -q ERROR "$work/single.log"; then
        grep -m1 ERROR "$work/single.log" >&2
        exit 1
    fi
    grep -o 'Collected : [0-9]*' "$work/single.log" | awk '{ print $3 }'
}

# The relay's side: drain a backlog of `count` events with the relay's own
# statements (sql/queue/read.sql, sql/queue/write_back_delivered.sql: every
# outcome is a delivery of an event read from the log, for which the relay
# uses it instead of the general sql/queue/write_back.sql; sql/queue/cursor.sql), `batch` rows a read and a write-back, each
# statement committed on its own as the relay's are, every outcome written
# back as delivered, the cursor moved after each batch. One relay owns the
# endpoint's 16 partitions. The backlog is written by a run of its own, not
# counted: one event per transaction, as top-ups are, their transaction ids
# consecutive from x0; each read sees a tick later by one batch, with four
# transactions in progress that wrote nothing (writers busy elsewhere), as
# bench/queue/b-drain.sql measured the prototype. The relay's queue sessions
# turn sequential and plain index scans off (src/db.rs). The parameters
# follow the statements' own: change both together.
flatten() { sed -e 's/--.*$//' "$1" | tr '\n' ' ' | sed -e "s/'/''/g"; }
relay_proc="CREATE OR REPLACE PROCEDURE bench_drain(batch int) LANGUAGE plpgsql AS \$\$
DECLARE
    parts int[] := ARRAY(SELECT generate_series(0, 15));
    x bigint := (SELECT x0 FROM bench_backlog_xids);
    running text[] := ARRAY[(x - 7)::text, (x - 5)::text, (x - 3)::text, (x - 2)::text];
    tick text; r record; ids bigint[]; vers text[]; keys text[]; n int;
BEGIN
    SET enable_seqscan = off;
    SET enable_indexscan = off;
    LOOP
        ids := '{}'; vers := '{}'; keys := '{}';
        tick := format('%s:%s:%s', running[1], x + batch, array_to_string(running, ','));
        FOR r IN EXECUTE '$(flatten sql/queue/read.sql)' USING 1, x::text, running, tick, parts, batch, 0::bigint, 15 LOOP
            CONTINUE WHEN r.id IS NULL;
            ids := ids || r.id; vers := vers || r.ctid; keys := keys || r.ordering_key;
        END LOOP;
        COMMIT;
        n := cardinality(ids);
        EXIT WHEN n = 0;
        x := x + batch;
        EXECUTE '$(flatten sql/queue/write_back_delivered.sql)' USING ids, array_fill(1, ARRAY[n]), array_fill('delivered'::text, ARRAY[n]),
            array_fill(now(), ARRAY[n]), array_fill(5, ARRAY[n]), array_fill(200, ARRAY[n]), array_fill(NULL::text, ARRAY[n]),
            array_fill(NULL::text, ARRAY[n]), array_fill(NULL::timestamptz, ARRAY[n]), 'bench', vers,
            array_fill(false, ARRAY[n]);
        COMMIT;
        EXECUTE '$(flatten sql/queue/cursor.sql)' USING 1, tick, parts, array_fill(0, ARRAY[16]), 'bench';
        COMMIT;
    END LOOP;
END \$\$;"
backlog_proc="CREATE TABLE IF NOT EXISTS bench_backlog_xids (x0 bigint);
CREATE OR REPLACE PROCEDURE bench_backlog(n int) LANGUAGE plpgsql AS \$\$
BEGIN
    TRUNCATE webhook.outbox; TRUNCATE webhook.attempts; TRUNCATE webhook.holds; TRUNCATE webhook.parked;
    TRUNCATE webhook.redeliveries; TRUNCATE webhook.dead_rows; TRUNCATE bench_backlog_xids;
    UPDATE webhook.partitions SET tick = '1:1:', owner = 'bench', lease_expires_at = now() + interval '1 day';
    COMMIT;
    FOR g IN 1 .. n LOOP
        INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id)
        VALUES (webhook.new_event_id(), 'add_credits', jsonb_build_object('buyerId', 'b' || g, 'buyerName', 'Bench Buyer ' || g,
                'postCodeList', '[\"AB1\",\"BN2\",\"GN3\"]'::jsonb, 'topUpAmount', 10, 'eventCode', 'add_credits'), 'b' || g, 1);
        IF g = 1 THEN
            INSERT INTO bench_backlog_xids VALUES (pg_current_xact_id()::text::bigint);
        END IF;
        COMMIT;
    END LOOP;
END \$\$;"
backlog() {
    {
        echo "$backlog_proc" | tr '\n' ' '; echo
        echo "$relay_proc" | tr '\n' ' '; echo
        echo "CALL bench_backlog($1);"
        echo "VACUUM ANALYZE webhook.outbox;"
    } >"$work/backlog.sql"
    chmod 644 "$work/backlog.sql"
    "${as_server[@]}" "$bindir/postgres" --single -D "$data" bench <"$work/backlog.sql" >"$work/backlog.log" 2>&1
    if grep -q ERROR "$work/backlog.log"; then grep -m1 ERROR "$work/backlog.log" >&2; exit 1; fi
}
drain() {
    local count=$1 batch=$2 out="$work/callgrind.out"
    backlog "$count"
    echo "CALL bench_drain($batch);" >"$work/in.sql"
    chmod 644 "$work/in.sql"
    "${as_server[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bindir/postgres" --single -D "$data" bench <"$work/in.sql" >"$work/single.log" 2>&1
    if grep -q ERROR "$work/single.log"; then grep -m1 ERROR "$work/single.log" >&2; exit 1; fi
    local left
    left=$(echo "SELECT count(*) FROM webhook.outbox WHERE status <> 'delivered';" \
        | "${as_server[@]}" "$bindir/postgres" --single -D "$data" bench 2>&1 | grep -o 'count = "[0-9]*"' | tr -dc 0-9)
    [ "$left" = 0 ] || { echo "instructions.sh: the drain left $left rows undelivered" >&2; exit 1; }
    echo "$(grep -o 'Collected : [0-9]*' "$work/single.log" | awk '{ print $3 }') $(planning "$out")"
}
# What callgrind file $1 counts in parsing, analysing and planning statements:
# the benchmark runs each statement by EXECUTE, planned every time; the relay
# prepares its statements once per connection and mostly skips this.
planning() {
    callgrind_annotate --inclusive=yes "$1" 2>/dev/null \
        | grep -E '\?\?\?:(raw_parser|pg_analyze_and_rewrite_[a-z]+|pg_plan_queries) \[' \
        | awk '{ gsub(",", "", $1); s += $1 } END { print s + 0 }'
}

reset="DROP TRIGGER IF EXISTS bench_bare ON buyer_credits; ALTER TABLE buyer_credits DISABLE TRIGGER webhook_events; ALTER TABLE buyer_postcodes DISABLE TRIGGER webhook_events; TRUNCATE webhook.outbox CASCADE;"
declare -A setup=(
    [no-trigger]="$reset"
    [bare-insert]="$reset CREATE TRIGGER bench_bare AFTER UPDATE ON buyer_credits FOR EACH ROW EXECUTE FUNCTION bench_bare_insert();"
    [reference-triggers]="$reset ALTER TABLE buyer_credits ENABLE TRIGGER webhook_events;"
    [postcode-no-trigger]="$reset"
    [postcode-trigger]="$reset ALTER TABLE buyer_postcodes ENABLE TRIGGER webhook_events;"
)
echo "# instructions per top-up (callgrind, single-user backend, $N and $((3 * N)) top-ups per sample)"
echo "# $(postgres_version=$("$bindir/postgres" --version); echo "$postgres_version"); $(nproc) cores, $(uname -m)"
# Bulk changes (ONLY=bulk): one statement or transaction changing n buyers,
# n = 2,500 and 10,000, each sample from the same state (the extra 'Y'
# postcodes removed and the outbox emptied with the triggers off, then the
# triggers on). The count of a sample with the set-up alone is subtracted.
bulk_sample() {
    local n=$1 stmt=$2 input="$work/in.sql" out="$work/callgrind.out"
    {
        echo "$reset DELETE FROM buyer_postcodes WHERE postcode LIKE 'Y%'; ALTER TABLE buyer_credits ENABLE TRIGGER webhook_events; ALTER TABLE buyer_postcodes ENABLE TRIGGER webhook_events;"
        [ "$n" = 0 ] || echo "${stmt//\{n\}/$n}"
    } >"$input"
    chmod 644 "$input"
    "${as_server[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bindir/postgres" --single -D "$data" bench <"$input" >"$work/single.log" 2>&1
    if grep -q ERROR "$work/single.log"; then grep -m1 ERROR "$work/single.log" >&2; exit 1; fi
    grep -o 'Collected : [0-9]*' "$work/single.log" | awk '{ print $3 }'
}
if [ "${ONLY:-}" = bulk ]; then
    declare -A bulk=(
        [insert-select]="INSERT INTO buyer_postcodes SELECT 'b' || g, 'Y' || g FROM generate_series(1, {n}) g;"
        [replace]="BEGIN; DELETE FROM buyer_postcodes WHERE buyer_id IN (SELECT 'b' || g FROM generate_series(1, {n}) g) AND postcode = 'AB1'; INSERT INTO buyer_postcodes SELECT 'b' || g, 'AB1' FROM generate_series(1, {n}) g; COMMIT;"
        [credits-update]="UPDATE buyer_credits SET balance = balance + 1 WHERE buyer_id IN (SELECT 'b' || g FROM generate_series(1, {n}) g);"
        [enqueue]="SELECT count(webhook.enqueue('add_credits', jsonb_build_object('n', g), 'b' || g)) FROM generate_series(1, {n}) g;"
    )
    echo "# bulk: instructions of one statement changing n buyers, with the reference triggers"
    base=$(bulk_sample 0 "")
    for step in insert-select replace credits-update enqueue; do
        small=$(( $(bulk_sample 2500 "${bulk[$step]}") - base ))
        large=$(( $(bulk_sample 10000 "${bulk[$step]}") - base ))
        printf '%-16s %6d per buyer at 2,500, %6d per buyer at 10,000: x%s for 4x the buyers\n' "$step" \
            $(( small / 2500 )) $(( large / 10000 )) "$(awk -v a="$small" -v b="$large" 'BEGIN { printf "%.2f", b / a }')"
    done
    exit 0
fi

# ONLY=postcode counts the postcode cases alone, ONLY=relay the relay's statements.
[ "${ONLY:-}" = postcode ] || [ "${ONLY:-}" = relay ] || for case in no-trigger bare-insert reference-triggers; do
    small=$(sample "${setup[$case]}" "$N")
    large=$(sample "${setup[$case]}" $((3 * N)))
    printf '%-20s %8d instructions per top-up\n' "$case" $(( (large - small) / (2 * N) ))
done
[ "${ONLY:-}" = topup ] && exit 0
[ "${ONLY:-}" = relay ] || for case in postcode-no-trigger postcode-trigger; do
    small=$(sample "${setup[$case]}" "$N" postcode)
    large=$(sample "${setup[$case]}" $((3 * N)) postcode)
    printf '%-20s %8d instructions per postcode change (one new postcode, its own transaction)\n' "$case" $(( (large - small) / (2 * N) ))
done
[ "${ONLY:-}" = postcode ] && exit 0
# BATCHES: rows a read and a write-back take (the relay reads up to 500 rows
# a statement, and writes back what has completed, up to 1,000).
for batch in ${BATCHES:-32 200}; do
    small=($(drain $((4 * N)) "$batch"))
    large=($(drain $((12 * N)) "$batch"))
    printf '%-20s %8d instructions per event (the relay'"'"'s read, write-back and cursor, %d a batch; %d and %d events), %d without parsing and planning\n' \
        "relay-statements" $(( (large[0] - small[0]) / (8 * N) )) "$batch" $((4 * N)) $((12 * N)) \
        $(( (large[0] - large[1] - small[0] + small[1]) / (8 * N) ))
done
