# sql/triggers.sql with webhook.enqueue called by an assignment instead of
# PERFORM: PL/pgSQL evaluates a plain function call assigned to a variable
# without starting the executor (a PERFORM is a SELECT). Applied by
# bench/queue-prototypes.sh to sql/triggers.sql; the result is loaded.
s/^DECLARE$/DECLARE\n    enqueued     text;/
s/PERFORM webhook\.enqueue(/enqueued := webhook.enqueue(/
