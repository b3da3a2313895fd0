-- The reference application schema (SPEC §2): buyers, their credits and their postcodes.
-- The application writes these tables; sql/triggers.sql turns the writes into events.
CREATE TABLE buyers (
  buyer_id      text PRIMARY KEY,
  business_name text NOT NULL,
  lead_cost     numeric(12,2) NOT NULL DEFAULT 0 CHECK (lead_cost >= 0)
);
CREATE TABLE buyer_credits (
  buyer_id text PRIMARY KEY REFERENCES buyers ON DELETE CASCADE,
  balance  numeric(12,2) NOT NULL DEFAULT 0
);
CREATE TABLE buyer_postcodes (
  buyer_id text NOT NULL REFERENCES buyers ON DELETE CASCADE,
  postcode text NOT NULL,
  PRIMARY KEY (buyer_id, postcode)
);
