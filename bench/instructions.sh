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
#
# Needs valgrind and the Postgres server binaries. Starts a throwaway cluster
# in a temporary directory (as the `postgres` or `nobody` account when run as
# root), loads migrations/, sql/example_app.sql, sql/triggers.sql, one
# endpoint subscribed to every event (its wake-up switch off, as under load)
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
for f in migrations/V*.sql sql/example_app.sql; do psql_ -d bench -f "$f" >/dev/null; done
psql_ -d bench -f sql/triggers.sql >/dev/null 2>&1
psql_ -d bench <<'SQL' >/dev/null
WITH e AS (INSERT INTO webhook.endpoints (name, url, events)
           VALUES ('bench', 'http://127.0.0.1:9/', ARRAY['user_credits_zero', 'post_code_change', 'add_credits'])
           RETURNING endpoint_id)
INSERT INTO webhook.wakeup (endpoint_id, armed) SELECT endpoint_id, false FROM e;
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

# The relay's side: drain a backlog of `count` pending rows with the relay's
# own claim and write-back statements (sql/claim.sql, sql/complete.sql), 32
# rows a claim as with the default max_in_flight, each statement committed
# on its own as the relay's are. The backlog is written by a run of its own,
# not counted.
flatten() { sed -e 's/--.*$//' "$1" | tr '\n' ' ' | sed -e "s/'/''/g"; }
relay_proc="CREATE OR REPLACE PROCEDURE bench_drain() LANGUAGE plpgsql AS \$\$ DECLARE r record; ids bigint[]; att int[]; leases timestamptz[]; vers text[]; n int; BEGIN SET enable_seqscan = off; LOOP ids := '{}'; att := '{}'; leases := '{}'; vers := '{}'; FOR r IN EXECUTE '$(flatten sql/claim.sql)' USING 1, 32, 30.0::float8, 'bench' LOOP ids := ids || r.id; att := att || r.attempts; leases := leases || r.lease_expires_at; vers := vers || r.ctid; END LOOP; COMMIT; n := cardinality(ids); EXIT WHEN n = 0; EXECUTE '$(flatten sql/complete.sql)' USING ids, att, array_fill('delivered'::text, ARRAY[n]), array_fill(now(), ARRAY[n]), array_fill(5, ARRAY[n]), array_fill(200, ARRAY[n]), array_fill(NULL::text, ARRAY[n]), array_fill(NULL::text, ARRAY[n]), array_fill(NULL::timestamptz, ARRAY[n]), 'bench', leases, vers; COMMIT; END LOOP; END \$\$;"
backlog() {
    echo "TRUNCATE webhook.outbox CASCADE; INSERT INTO webhook.outbox (event_id, event_code, payload, ordering_key, endpoint_id) SELECT webhook.new_event_id(), 'add_credits', jsonb_build_object('buyerId', 'b' || g, 'buyerName', 'Bench Buyer ' || g, 'postCodeList', '[\"AB1\",\"BN2\",\"GN3\"]'::jsonb, 'topUpAmount', 10, 'eventCode', 'add_credits'), 'b' || g, 1 FROM generate_series(1, $1) g;" >"$work/backlog.sql"
    echo "$relay_proc" >>"$work/backlog.sql"
    echo "VACUUM ANALYZE webhook.outbox;" >>"$work/backlog.sql"
    chmod 644 "$work/backlog.sql"
    "${as_server[@]}" "$bindir/postgres" --single -D "$data" bench <"$work/backlog.sql" >"$work/backlog.log" 2>&1
    if grep -q ERROR "$work/backlog.log"; then grep -m1 ERROR "$work/backlog.log" >&2; exit 1; fi
}
drain() {
    local count=$1 out="$work/callgrind.out"
    backlog "$count"
    echo "CALL bench_drain();" >"$work/in.sql"
    chmod 644 "$work/in.sql"
    "${as_server[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bindir/postgres" --single -D "$data" bench <"$work/in.sql" >"$work/single.log" 2>&1
    if grep -q ERROR "$work/single.log"; then grep -m1 ERROR "$work/single.log" >&2; exit 1; fi
    local left
    left=$(echo "SELECT count(*) FROM webhook.outbox WHERE status <> 'delivered';" \
        | "${as_server[@]}" "$bindir/postgres" --single -D "$data" bench 2>&1 | grep -o 'count = "[0-9]*"' | tr -dc 0-9)
    [ "$left" = 0 ] || { echo "instructions.sh: the drain left $left rows undelivered" >&2; exit 1; }
    grep -o 'Collected : [0-9]*' "$work/single.log" | awk '{ print $3 }'
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

# ONLY=postcode counts the postcode cases alone.
[ "${ONLY:-}" = postcode ] || for case in no-trigger bare-insert reference-triggers; do
    small=$(sample "${setup[$case]}" "$N")
    large=$(sample "${setup[$case]}" $((3 * N)))
    printf '%-20s %8d instructions per top-up\n' "$case" $(( (large - small) / (2 * N) ))
done
for case in postcode-no-trigger postcode-trigger; do
    small=$(sample "${setup[$case]}" "$N" postcode)
    large=$(sample "${setup[$case]}" $((3 * N)) postcode)
    printf '%-20s %8d instructions per postcode change (one new postcode, its own transaction)\n' "$case" $(( (large - small) / (2 * N) ))
done
[ "${ONLY:-}" = postcode ] && exit 0
small=$(drain $((4 * N)))
large=$(drain $((12 * N)))
printf '%-20s %8d instructions per event (the relay'"'"'s claim and write-back, %d and %d rows)\n' \
    "relay-statements" $(( (large - small) / (8 * N) )) $((4 * N)) $((12 * N))
