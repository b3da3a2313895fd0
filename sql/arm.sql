-- Arm endpoint $1's wake-up switch: from now on, writing transactions that
-- enqueue for it send a NOTIFY (docs/wakeup.md). A HOT update of the
-- endpoint's row, which writers read without locking.
UPDATE webhook.endpoints SET armed = true WHERE endpoint_id = $1 AND NOT armed
