"""The webhook server's certificate authority and serving certificate (files, no API calls)."""
