"""Read-only views of the payment event log for finance and audit: ``payorch audit export``
(the whole log to a file) and ``payorch audit show`` (one payment's timeline)."""
