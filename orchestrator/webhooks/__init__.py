"""Provider webhooks: verify, record, acknowledge; then apply in the background, once."""
