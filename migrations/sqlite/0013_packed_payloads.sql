-- Payloads packed: new payloads are stored as an LZ4 block (the body's length as 4 bytes, little-endian,
-- then the block), `encoding` = 'lz4'. A webhook's JSON packs 5-8-fold, and under a flood of deliveries most
-- of the single writer's time went to copying the raw bodies into the WAL (and again at each checkpoint).
-- Rows written before keep their raw bytes, `encoding` NULL; the store reads both (src/store/payload.rs).
ALTER TABLE delivery_payloads ADD COLUMN encoding TEXT;
