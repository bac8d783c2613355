-- Seconds the aggregator published incomplete: trades of the second were skipped on the way to it (its
-- subscription to socket_proxy was cut) and could not be fetched back from the exchange's history in time, so
-- the row holds the trades it got. The SecondStat says so with "x": true (docs/CONTRACTS.md); every row
-- written before this migration, and every whole second, reads false. Candles include these seconds as
-- published; filter on `incomplete` to leave them out.
ALTER TABLE crypto.price_seconds ADD COLUMN IF NOT EXISTS incomplete Bool DEFAULT false;
