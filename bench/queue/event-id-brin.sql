-- Event ids are time-ordered and rows are appended in time order: a BRIN
-- index finds one (a few pages read per look-up) for almost nothing per
-- insert, where the b-tree costs an entry per row.
DROP INDEX webhook.outbox_event_id;
CREATE INDEX outbox_event_id ON webhook.outbox USING brin (event_id) WITH (pages_per_range = 4);
