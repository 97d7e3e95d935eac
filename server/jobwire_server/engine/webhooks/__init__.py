"""Webhook delivery: the address guard, signing, one HTTP attempt, and the outbox sender."""
