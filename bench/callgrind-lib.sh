# For bench/queue-prototypes.sh: bench/instructions.sh's set-up as functions
# (a throwaway cluster with the reference schema, and single-user backends
# run under callgrind), so that the prototypes are counted exactly as today's
# queue is. Source it from the repository root; it sets `bindir`, `work`,
# `data`, `as_server` and defines the functions below.
#
# Needs valgrind and the Postgres server binaries. As root, the server runs as
# the `postgres` (or `nobody`) account, as the project's throwaway clusters do.

command -v valgrind >/dev/null || { echo "$0: valgrind is not installed" >&2; exit 2; }

bindir=""
if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/postgres" ]; then
    bindir=$(pg_config --bindir)
else
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
[ -x "$bindir/postgres" ] || { echo "$0: no Postgres server binaries found" >&2; exit 2; }

work=$(mktemp -d)
as_server=()
if [ "$(id -u)" = 0 ]; then
    account=""
    for name in postgres nobody; do
        if id "$name" >/dev/null 2>&1; then account=$name; break; fi
    done
    [ -n "$account" ] || { echo "$0: running as root without a postgres or nobody account" >&2; exit 2; }
    as_server=(runuser -u "$account" --)
    chown "$account" "$work"
fi
data="$work/data"
port=$(( 20000 + RANDOM % 20000 ))

cg_cleanup() {
    "${as_server[@]}" "$bindir/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    if [ -n "${KEEP:-}" ]; then
        echo "# kept $work (callgrind.out: the last sample; callgrind_annotate reads it)"
    else
        rm -rf "$work"
    fi
}
trap cg_cleanup EXIT

psql_() { psql -X -q -v ON_ERROR_STOP=1 -h "$work" -p "$port" -U postgres "$@"; }

cg_start() {
    "${as_server[@]}" "$bindir/pg_ctl" -D "$data" -l "$work/server.log" -w \
        -o "-p $port -k $work -c listen_addresses= -c shared_buffers=1GB" start >/dev/null
}
cg_stop() { "${as_server[@]}" "$bindir/pg_ctl" -D "$data" -w stop >/dev/null; }

# A new cluster, started, with database `bench`: migrations/, the reference
# schema and triggers (disabled), one endpoint subscribed to every event (its
# wake-up switch off, as under load), 10,000 buyers with three postcodes each,
# and a trigger function that inserts one constant outbox row.
cg_init() {
    "${as_server[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust >"$work/initdb.log" 2>&1
    cg_start
    psql_ -d postgres -c "CREATE DATABASE bench"
    for f in $(ls migrations/V*.sql | sort -V) sql/example_app.sql; do psql_ -d bench -f "$f" >/dev/null; done
    psql_ -d bench -f sql/triggers.sql >/dev/null 2>&1
    psql_ -d bench <<'SQL' >/dev/null
INSERT INTO webhook.endpoints (name, url, events, armed)
VALUES ('bench', 'http://127.0.0.1:9/', ARRAY['user_credits_zero', 'post_code_change', 'add_credits'], false);
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
}

# Runs file $2 in a single-user backend on database $1 (each line is a
# statement and a transaction); stops at the first ERROR.
cg_single() {
    local db=$1 input=$2 log="$work/single.log"
    chmod 644 "$input"
    "${as_server[@]}" "$bindir/postgres" --single -D "$data" "$db" <"$input" >"$log" 2>&1
    if grep -q ERROR "$log"; then grep -m1 -A2 ERROR "$log" >&2; exit 1; fi
}

# The same under callgrind; prints the instructions it counted.
cg_count() {
    local db=$1 input=$2 log="$work/single.log"
    chmod 644 "$input"
    "${as_server[@]}" valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
        "$bindir/postgres" --single -D "$data" "$db" <"$input" >"$log" 2>&1
    if grep -q ERROR "$log"; then grep -m1 -A2 ERROR "$log" >&2; exit 1; fi
    grep -o 'Collected : [0-9]*' "$log" | awk '{ print $3 }'
}

# The instructions callgrind file $1 counts in parsing, analysing and
# planning statements (what a prepared statement does not repeat).
cg_planning() {
    callgrind_annotate --inclusive=yes "$1" 2>/dev/null \
        | grep -E '\?\?\?:(raw_parser|pg_analyze_and_rewrite_[a-z]+|pg_plan_queries) \[' \
        | awk '{ gsub(",", "", $1); s += $1 } END { print s + 0 }'
}

# The value of a one-column, one-row query $2 on database $1 (single-user).
cg_value() {
    echo "$2" | "${as_server[@]}" "$bindir/postgres" --single -D "$data" "$1" 2>&1 \
        | grep -o '= "[^"]*"' | head -1 | tr -d '=" '
}

# Writes file $3: the line $1, then $2 top-ups, one per line, each its own
# transaction as in the benchmark's load.
cg_topups() {
    {
        echo "$1"
        for i in $(seq "$2"); do
            echo "UPDATE buyer_credits SET balance = balance + 1 WHERE buyer_id = 'b$(( (i * 7919) % 10000 + 1 ))';"
        done
    } >"$3"
}

# One line of SQL from file $1 as the body of a string literal: comments
# dropped, newlines joined, quotes doubled.
cg_flatten() { sed -e 's/--.*$//' "$1" | tr '\n' ' ' | sed -e "s/'/''/g"; }
