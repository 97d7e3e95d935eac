"""Pure domain: states, transitions, models, outcomes, retry policy and clock. No I/O here."""
