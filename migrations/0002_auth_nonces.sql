-- Replay protection for service-to-service authentication (docs/contract.md §4), shared by every
-- replica. A row is a nonce (hmac-v1) or a signature (hmac-v2) already accepted from a service.
-- Insertion is the atomic check: INSERT ... ON CONFLICT DO NOTHING affecting no row means replay.
--
-- Rows are only needed while their timestamp could still pass the 5-minute window, so each row
-- carries an expiry and a purge deletes expired rows; the table's size is bounded by the request
-- rate times the window.
CREATE TABLE auth_nonces
(
    service    text        NOT NULL,
    nonce      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (service, nonce)
);

CREATE INDEX auth_nonces_expiry_idx ON auth_nonces (expires_at);
