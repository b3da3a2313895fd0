-- Status API: the endpoint named $1.
SELECT endpoint_id FROM webhook.endpoints WHERE name = $1
