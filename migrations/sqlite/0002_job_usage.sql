-- What a job's agent spent, as the backend reported it (JSON: turns, tokens, cost, model), and when known.
ALTER TABLE jobs ADD COLUMN usage TEXT;
