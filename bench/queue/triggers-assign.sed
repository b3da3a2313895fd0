# sql/triggers.sql with webhook.enqueue called by an assignment instead of
# PERFORM: PL/pgSQL evaluates a plain function call assigned to a variable
# without starting the executor (a PERFORM is a SELECT). Applied by
# bench/queue-prototypes.sh to sql/triggers.sql; the result is loaded.
# sql/triggers.sql itself does this since V10: the first line drops its
# declarations, so that the result is the same on either version.
/^    enqueued  *text;/d
s/^DECLARE$/DECLARE\n    enqueued     text;/
s/PERFORM webhook\.enqueue(/enqueued := webhook.enqueue(/
