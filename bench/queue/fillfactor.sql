-- Room on every page for each row's one outcome version, so the write-back
-- is a HOT update (no index entry) even when one statement updates every
-- row of a page: the rows are written once and updated once.
ALTER TABLE webhook.outbox SET (fillfactor = 45);
