-- Attempts per endpoint and minute, for the status page (docs/operations.md):
-- each relay adds what it saw about once a second, so the page reads at most
-- fifteen small rows per endpoint instead of counting the last minutes of
-- webhook.attempts (measured: 4 s per page at 1,000 attempts a second, five
-- endpoints). Rows older than a day are removed by the relays as they write.
CREATE TABLE webhook.endpoint_minutes (
    endpoint_id integer     NOT NULL,
    minute      timestamptz NOT NULL,
    delivered   integer     NOT NULL DEFAULT 0,
    failed      integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (endpoint_id, minute)
);
